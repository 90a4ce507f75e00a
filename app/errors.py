"""The error codes the API answers with, ApiError, and the one JSON error shape:

    {"error": {"code": "...", "message": "...", "request_id": "req_..."}}

A leaf: it imports nothing of the app, so every layer may raise these; app/http/errors.py renders them.
`ERROR_CODES` is the only list of codes: ApiError refuses any other, and the
README's error table and /openapi.json's error documentation are rendered from it.
Adding a code is one line there (plus the scenario in tests/test_fast.py that
makes the service answer it).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any


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
        400,
        "`image_url` is not http(s), or points at a loopback, private, link-local or reserved address "
        "(not in `fetch_allow`), or fetching is off (`fetch_enabled`)",
    ),
    "image_url_unreachable": ErrorCode(
        400, "`image_url` failed: no such host, no connection, not HTTP 200, over 3 redirects or `fetch_timeout_s`"
    ),
    "image_url_too_large": ErrorCode(400, "the image at `image_url` is over `max_body_bytes`"),
    "webhook_url_forbidden": ErrorCode(
        400,
        "`webhook_url` is not an http(s) URL, or points at a loopback, private, link-local or reserved address "
        "(not in `fetch_allow`)",
    ),
    "too_many_items": ErrorCode(400, "a batch with no item, or with more than `batch_max_items`"),
    "invalid_api_key": ErrorCode(401, "missing, unknown or revoked key"),
    "insufficient_credits": ErrorCode(402, "the balance does not cover the model's cost"),
    "not_found": ErrorCode(404, "unknown route"),
    "job_not_found": ErrorCode(
        404, "unknown job or batch, another account's, or one whose results were removed (`job_ttl_s`)"
    ),
    "method_not_allowed": ErrorCode(405, "wrong method"),
    "request_timeout": ErrorCode(408, "the upload stalled or took too long (`body_timeout_s`, `body_deadline_s`)"),
    "idempotency_key_in_use": ErrorCode(
        409, "a request with this `Idempotency-Key` is still running", retry_after=True
    ),
    "job_not_cancellable": ErrorCode(409, "the job (or every item of the batch) has already started or ended"),
    "result_not_ready": ErrorCode(409, "the job has not succeeded (yet): its `status` and `error` say why"),
    "payload_too_large": ErrorCode(413, "body over `max_body_bytes`"),
    "image_too_large": ErrorCode(413, "more than `max_pixels` pixels or a side over `max_side` (read from the header)"),
    "idempotency_key_reused": ErrorCode(422, "this `Idempotency-Key` was used for a different request"),
    "request_head_too_large": ErrorCode(
        431, "the request line and headers are over `max_head_bytes`, or over `max_headers` headers"
    ),
    "rate_limit_exceeded": ErrorCode(429, "rate limit spent; the body has `retry_after` (s)", retry_after=True),
    "concurrency_limit_exceeded": ErrorCode(
        429,
        "the account already has its plan's `max_concurrent` requests being processed and `max_queued` more "
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


def idempotency_key_in_use() -> ApiError:
    # Raised in two places: the account's line (a twin waiting in this process) and the store's claim.
    return ApiError(
        "idempotency_key_in_use", "A request with this Idempotency-Key is still being processed; retry shortly."
    )


def processing_timeout() -> ApiError:
    return ApiError("processing_timeout", "Processing took too long and was abandoned; nothing was charged.")
