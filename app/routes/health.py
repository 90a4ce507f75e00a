"""GET /health (process alive) and GET /ready (models loaded, store reachable, not draining)."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse

from app.http.shutdown import Drain
from app.services import services


def _not_ready(status: str) -> JSONResponse:
    return JSONResponse({"status": status}, status_code=503, headers={"Retry-After": "1"})


async def health(request: Request) -> JSONResponse:
    return JSONResponse({"status": "ok"})


async def ready(request: Request) -> JSONResponse:
    drain: Drain = request.app.state.drain
    if drain.draining:
        return _not_ready("shutting_down")
    svc = getattr(request.app.state, "services", None)
    if svc is None or not svc.registry.names:
        return _not_ready("starting")
    try:
        await services(request).store.ping()
    except Exception:
        return _not_ready("store_unreachable")
    return JSONResponse({"status": "ready", "models": svc.registry.names})
