"""Rendering errors: an ApiError (or Starlette's own 404/405, a store outage, a bug) as our JSON error shape.

The codes and ApiError live in app/errors.py, a leaf every layer may raise from; only this module knows Starlette's responses.
"""

from __future__ import annotations

import logging
from typing import Any

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import Receive, Scope, Send

from app.errors import ApiError
from app.http import context
from app.http.context import request_id_of
from app.store.base import StoreUnavailable

log = logging.getLogger("cutout.errors")


class ErrorResponse(JSONResponse):
    """An ApiError in our JSON shape; as it is sent, its code is recorded for the access log and metrics."""

    def __init__(self, request_id: str, err: ApiError) -> None:
        body: dict[str, Any] = {
            "error": {"code": err.code, "message": err.message, "request_id": request_id},
            **err.extra,
        }
        super().__init__(body, status_code=err.status, headers={**err.headers, "X-Request-ID": request_id})
        self.code = err.code

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        context.of_scope(scope).error_code = self.code
        await super().__call__(scope, receive, send)


def error_response(request_id: str, err: ApiError) -> ErrorResponse:
    return ErrorResponse(request_id, err)


# Starlette's own HTTPExceptions: the router's 404/405 (and the form parser's 400, caught in the route).
_HTTP_CODES = {400: "invalid_parameter", 404: "not_found", 405: "method_not_allowed", 413: "payload_too_large"}


async def handle_api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    return error_response(request_id_of(request), exc)


ECHO_PATH_CHARS = 100


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[:limit] + "…"


async def handle_http_exception(request: Request, exc: Exception) -> Response:
    """Starlette's own 404/405 (unknown route or method) in our shape."""
    assert isinstance(exc, HTTPException)
    code = _HTTP_CODES.get(exc.status_code)
    if code is None:  # a status we never meant to answer: a bug, shown as one
        return await handle_unexpected(request, exc)
    # The client's path and method are echoed cut short: a 60 KB path must not come back as a 60 KB body.
    path = _cut(request.url.path, ECHO_PATH_CHARS)
    method = _cut(request.method, 20)
    if exc.status_code == 404:
        message = f"No such endpoint: {method} {path}. See /openapi.json."
    elif exc.status_code == 405:
        message = f"Method {method} is not allowed on {path}."
    else:
        message = str(exc.detail)
    err = ApiError(code, message, headers=dict(exc.headers or {}))
    return error_response(request_id_of(request), err)


async def handle_store_unavailable(request: Request, exc: Exception) -> Response:
    # Fail closed: without the ledger nothing is processed (for free) and nothing is charged.
    log.warning("store unavailable: %s", exc, extra={"request_id": request_id_of(request)})
    err = ApiError(
        "service_unavailable",
        "Accounts are temporarily unavailable; nothing was charged. Retry shortly.",
        retry_after_s=2,
    )
    return error_response(request_id_of(request), err)


async def handle_unexpected(request: Request, exc: Exception) -> Response:
    # Logged with the traceback for us; the client sees only the request id.
    log.error("unhandled error in %s %s (%s)", request.method, request.url.path, request_id_of(request), exc_info=exc)
    err = ApiError("internal_error", "Internal error. Quote the request id if you contact support.")
    return error_response(request_id_of(request), err)


EXCEPTION_HANDLERS = {
    ApiError: handle_api_error,
    HTTPException: handle_http_exception,
    StoreUnavailable: handle_store_unavailable,
    Exception: handle_unexpected,
}
