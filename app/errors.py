"""The error codes the API answers with, ApiError, and the one JSON error shape:

    {"error": {"code": "...", "message": "...", "request_id": "req_..."}}

`ERROR_CODES` is the only list of codes: ApiError refuses any other, and the
README's error table and /openapi.json's error documentation are rendered from it.
Adding a code is one line there (plus the scenario in tests/test_fast.py that
makes the service answer it).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import Receive, Scope, Send

from app import context
from app.store.base import StoreUnavailable

log = logging.getLogger("cutout.errors")


@dataclass(frozen=True)
class ErrorCode:
    status: int
    meaning: str  # when it is answered, for the README and /openapi.json
    retry_after: bool = False  # answered with a Retry-After header (1 s unless the raiser knows better)
    public: bool = True  # False: the client has gone; only our logs and metrics see it


ERROR_CODES: dict[str, ErrorCode] = {
    "invalid_image": ErrorCode(400, "no `image` part, not an image, truncated or corrupt"),
    "invalid_parameter": ErrorCode(
        400,
        "unknown model, an operating resolution the model does not offer, unknown field, several files, "
        "malformed multipart, bad `Idempotency-Key`",
    ),
    "image_url_forbidden": ErrorCode(
        400, "`image_url` is not http(s), or points at a loopback, private, link-local or reserved address "
        "(not in `fetch_allow`), or fetching is off (`fetch_enabled`)"
    ),
    "image_url_unreachable": ErrorCode(
        400, "`image_url` failed: no such host, no connection, not HTTP 200, over 3 redirects or `fetch_timeout_s`"
    ),
    "image_url_too_large": ErrorCode(400, "the image at `image_url` is over `max_body_bytes`"),
    "invalid_api_key": ErrorCode(401, "missing, unknown or revoked key"),
    "insufficient_credits": ErrorCode(402, "the balance does not cover the model's cost"),
    "not_found": ErrorCode(404, "unknown route"),
    "method_not_allowed": ErrorCode(405, "wrong method"),
    "request_timeout": ErrorCode(408, "the upload stalled or took too long (`body_timeout_s`, `body_deadline_s`)"),
    "idempotency_key_in_use": ErrorCode(409, "a request with this `Idempotency-Key` is still running", retry_after=True),
    "payload_too_large": ErrorCode(413, "body over `max_body_bytes`"),
    "image_too_large": ErrorCode(413, "more than `max_pixels` pixels or a side over `max_side` (read from the header)"),
    "idempotency_key_reused": ErrorCode(422, "this `Idempotency-Key` was used for a different request"),
    "request_head_too_large": ErrorCode(431, "the request line and headers are over `max_head_bytes`, or over `max_headers` headers"),
    "rate_limit_exceeded": ErrorCode(429, "rate limit spent; the body has `retry_after` (s)", retry_after=True),
    "concurrency_limit_exceeded": ErrorCode(
        429, "the account already has its plan's `max_concurrent` requests being processed and `max_queued` more "
        "waiting; the body has `retry_after` (s)",
        retry_after=True,
    ),
    "client_closed_request": ErrorCode(499, "the client hung up before the answer", public=False),
    "internal_error": ErrorCode(500, "a bug on our side; never contains a traceback"),
    "server_busy": ErrorCode(503, "every worker and queue place is taken", retry_after=True),
    "processing_timeout": ErrorCode(503, "processing took longer than `processing_timeout_s`", retry_after=True),
    "service_unavailable": ErrorCode(503, "a dependency (the account store) is down", retry_after=True),
    "shutting_down": ErrorCode(503, "the server is stopping; retry and another instance answers", retry_after=True),
}


def error_table() -> str:
    """ERROR_CODES as the Markdown table that the README and /openapi.json show."""
    rows = ["| status | code | when |", "|---|---|---|"]
    for code, spec in sorted(ERROR_CODES.items(), key=lambda item: item[1].status):
        if spec.public:
            retry = "; `Retry-After` header" if spec.retry_after else ""
            rows.append(f"| {spec.status} | `{code}` | {spec.meaning}{retry} |")
    return "\n".join(rows) + "\n"


class ApiError(Exception):
    """An answer in our error shape; the status and the Retry-After rule come from ERROR_CODES."""

    def __init__(
        self,
        code: str,
        message: str,
        *,
        retry_after_s: int = 1,
        headers: dict[str, str] | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        if code not in ERROR_CODES:
            raise ValueError(f"error code {code!r} is not in app.errors.ERROR_CODES")
        super().__init__(message)
        self.code = code
        self.status = ERROR_CODES[code].status
        self.message = message
        self.headers = dict(headers or {})
        if ERROR_CODES[code].retry_after:
            self.headers.setdefault("Retry-After", str(retry_after_s))
        self.extra = extra or {}


def invalid_image(message: str) -> ApiError:
    return ApiError("invalid_image", message)


def invalid_parameter(message: str) -> ApiError:
    return ApiError("invalid_parameter", message)


def invalid_api_key(message: str) -> ApiError:
    return ApiError("invalid_api_key", message)


def payload_too_large(limit_bytes: int, headers: dict[str, str] | None = None) -> ApiError:
    message = f"The request body is larger than the limit of {limit_bytes} bytes."
    return ApiError("payload_too_large", message, headers=headers)


def client_closed_request() -> ApiError:
    # 499 as nginx logs it: nobody reads this response, but the log shows why the work stopped.
    return ApiError("client_closed_request", "The client closed the connection; nothing was charged.")


def rate_limited(retry_after_s: float, limit: str, *, why: str = "", headers: dict[str, str] | None = None) -> ApiError:
    retry_after = max(1, math.ceil(retry_after_s))
    return ApiError(
        "rate_limit_exceeded",
        f"{why}Rate limit of {limit} exceeded; retry in {retry_after} s.",
        retry_after_s=retry_after,
        headers=headers,
        extra={"retry_after": retry_after},
    )


def processing_timeout() -> ApiError:
    return ApiError("processing_timeout", "Processing took too long and was abandoned; nothing was charged.")


def request_id_of(request: Request) -> str:
    return context.of_scope(request.scope).request_id


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
        "service_unavailable", "Accounts are temporarily unavailable; nothing was charged. Retry shortly.", retry_after_s=2
    )
    return error_response(request_id_of(request), err)


async def handle_unexpected(request: Request, exc: Exception) -> Response:
    # Logged with the traceback for us; the client sees only the request id.
    log.error(
        "unhandled error in %s %s (%s)", request.method, request.url.path, request_id_of(request), exc_info=exc
    )
    err = ApiError("internal_error", "Internal error. Quote the request id if you contact support.")
    return error_response(request_id_of(request), err)


EXCEPTION_HANDLERS = {
    ApiError: handle_api_error,
    HTTPException: handle_http_exception,
    StoreUnavailable: handle_store_unavailable,
    Exception: handle_unexpected,
}
