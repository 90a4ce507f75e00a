"""The pages a person opens: / (where to go), /docs (Swagger UI over /openapi.json), /demo (try it).

Both are static files with no build step: ours in app/static/, Swagger UI's
from the swagger-ui-py package (its files are served, its Python code unused).
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.staticfiles import StaticFiles

# Package data: in a source checkout and in an installed wheel alike.
STATIC_DIR = Path(str(files("app") / "static"))


def static_files() -> StaticFiles:
    return StaticFiles(directory=STATIC_DIR)


def swagger_ui_files() -> StaticFiles:
    return StaticFiles(directory=str(files("swagger_ui") / "static"))


# The demo page is where people paste keys: no script but our own files (nothing injected can run),
# no framing (clickjacking), no content-type sniffing. Blob and data images are the photo and
# its cut-out, and Swagger UI's icons.
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
        "connect-src 'self' blob:; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
}


async def docs(request: Request) -> FileResponse:
    return FileResponse(STATIC_DIR / "docs.html", headers=SECURITY_HEADERS)


async def demo(request: Request) -> FileResponse:
    return FileResponse(STATIC_DIR / "demo.html", headers=SECURITY_HEADERS)


# What GET / tells a program (curl, a health dashboard): where the pages and the API are.
INDEX = {
    "service": "cutout",
    "demo": "/demo",
    "docs": "/docs",
    "openapi": "/openapi.json",
    "endpoints": {"cutout": "POST /v2/rembg/", "mask": "POST /v2/rembg/mask/", "account": "GET /v2/account"},
}


async def index(request: Request) -> Response:
    """A browser (it asks for text/html) gets a page linking /demo and /docs; anything else, the same as JSON."""
    if "text/html" in request.headers.get("accept", ""):
        return FileResponse(STATIC_DIR / "index.html", headers=SECURITY_HEADERS)
    return JSONResponse(INDEX)
