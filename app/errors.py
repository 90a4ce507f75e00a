"""ApiError and the one JSON error shape every failure is rendered in:

    {"error": {"code": "...", "message": "...", "request_id": "req_..."}}
"""

from __future__ import annotations

import logging
import math
from typing import Any

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from app.store.base import StoreUnavailable

log = logging.getLogger("cutout.errors")


class ApiError(Exception):
    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        headers: dict[str, str] | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or {}
        self.extra = extra or {}


def invalid_image(message: str) -> ApiError:
    return ApiError(400, "invalid_image", message)


def invalid_parameter(message: str) -> ApiError:
    return ApiError(400, "invalid_parameter", message)


def invalid_api_key(message: str = "Send a valid API key in the ApiKey header.") -> ApiError:
    return ApiError(401, "invalid_api_key", message)


def payload_too_large(limit_bytes: int) -> ApiError:
    return ApiError(
        413, "payload_too_large", f"The request body is larger than the limit of {limit_bytes} bytes."
    )


def client_closed_request() -> ApiError:
    # 499 as nginx logs it: nobody reads this response, but the log shows why the work stopped.
    return ApiError(499, "client_closed_request", "The client closed the connection; nothing was charged.")


def rate_limited(retry_after_s: float, limit: str) -> ApiError:
    retry_after = max(1, math.ceil(retry_after_s))
    return ApiError(
        429,
        "rate_limit_exceeded",
        f"Rate limit of {limit} exceeded; retry in {retry_after} s.",
        headers={"Retry-After": str(retry_after)},
        extra={"retry_after": retry_after},
    )


def service_unavailable(message: str, retry_after_s: int = 1, code: str = "service_unavailable") -> ApiError:
    return ApiError(503, code, message, headers={"Retry-After": str(retry_after_s)})


def request_id_of(request: Request) -> str:
    return getattr(request.state, "request_id", "") or ""


def error_response(request_id: str, err: ApiError) -> JSONResponse:
    body: dict[str, Any] = {
        "error": {"code": err.code, "message": err.message, "request_id": request_id},
        **err.extra,
    }
    headers = {**err.headers, "X-Request-ID": request_id}
    return JSONResponse(body, status_code=err.status, headers=headers)


_HTTP_CODES = {
    400: "invalid_parameter",
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
}


async def handle_api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    return error_response(request_id_of(request), exc)


async def handle_http_exception(request: Request, exc: Exception) -> Response:
    """Starlette's own 404/405 (unknown route or method) in our shape."""
    assert isinstance(exc, HTTPException)
    code = _HTTP_CODES.get(exc.status_code, "http_error")
    if exc.status_code == 404:
        message = f"No such endpoint: {request.method} {request.url.path}. See /openapi.json."
    elif exc.status_code == 405:
        message = f"Method {request.method} is not allowed on {request.url.path}."
    else:
        message = str(exc.detail)
    err = ApiError(exc.status_code, code, message, headers=dict(exc.headers or {}))
    return error_response(request_id_of(request), err)


async def handle_store_unavailable(request: Request, exc: Exception) -> Response:
    # Fail closed: without the ledger nothing is processed (for free) and nothing is charged.
    log.warning("store unavailable: %s", exc, extra={"request_id": request_id_of(request)})
    err = service_unavailable("Accounts are temporarily unavailable; nothing was charged. Retry shortly.", 2)
    return error_response(request_id_of(request), err)


async def handle_unexpected(request: Request, exc: Exception) -> Response:
    # Logged with the traceback for us; the client sees only the request id.
    log.exception("unhandled error in %s %s (%s)", request.method, request.url.path, request_id_of(request))
    err = ApiError(500, "internal_error", "Internal error. Quote the request id if you contact support.")
    return error_response(request_id_of(request), err)


EXCEPTION_HANDLERS = {
    ApiError: handle_api_error,
    HTTPException: handle_http_exception,
    StoreUnavailable: handle_store_unavailable,
    Exception: handle_unexpected,
}
