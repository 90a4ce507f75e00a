"""GET /health (process alive) and GET /ready (models loaded, store reachable)."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse

from app.services import services


async def health(request: Request) -> JSONResponse:
    return JSONResponse({"status": "ok"})


async def ready(request: Request) -> JSONResponse:
    svc = getattr(request.app.state, "services", None)
    if svc is None:
        return JSONResponse({"status": "starting"}, status_code=503, headers={"Retry-After": "1"})
    try:
        await services(request).store.ping()
    except Exception:
        return JSONResponse({"status": "store_unreachable"}, status_code=503, headers={"Retry-After": "1"})
    return JSONResponse({"status": "ready", "models": svc.registry.names})
