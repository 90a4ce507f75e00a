"""Pure ASGI middleware: request ids with access logs and metrics, and the streaming body limit.

Pure ASGI (not BaseHTTPMiddleware) so the body streams through untouched and
nothing is buffered twice.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import time

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app import metrics
from app.client_address import client_address, parse_networks
from app.errors import ApiError, error_response, payload_too_large

log = logging.getLogger("cutout.access")

# Our error bodies are a few hundred bytes; anything longer is not one of them.
MAX_ERROR_BODY = 4096


def new_request_id() -> str:
    return "req_" + secrets.token_hex(12)


class RequestContext:
    """Gives every request an id (scope state `request_id`, header X-Request-ID), then writes
    its JSON access log line and counts it in the metrics.

    Handlers add what only they know to the request state: `account_id` (auth; never
    the key), `model`, `inference_ms` and `credits_charged` (the rembg routes).
    """

    def __init__(self, app: ASGIApp, max_headers: int = 100, trusted_proxies: list[str] | None = None) -> None:
        self.app = app
        self.max_headers = max_headers
        self.trusted_proxies = parse_networks(trusted_proxies or [])

    def _client_address(self, scope: Scope) -> str:
        peer = scope["client"][0] if scope.get("client") else "unknown"
        if not self.trusted_proxies:
            return peer
        forwarding: dict[str, str] = {}
        for name, value in scope["headers"]:
            if name in (b"forwarded", b"x-forwarded-for"):  # repeated lines form one list
                key = name.decode()
                forwarding[key] = f"{forwarding[key]}, {value.decode('latin-1')}" if key in forwarding else value.decode("latin-1")
        return client_address(peer, forwarding, self.trusted_proxies)

    def _too_many_headers(self, request_id: str) -> ASGIApp:
        err = ApiError(
            "request_head_too_large",
            f"The request has more than {self.max_headers} headers.",
            headers={"Connection": "close"},
        )
        return error_response(request_id, err)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = new_request_id()
        state = scope.setdefault("state", {})
        state["request_id"] = request_id
        # The address rate limits count against (auth failures): see app.client_address.
        state["client_address"] = self._client_address(scope)
        app = self._too_many_headers(request_id) if len(scope["headers"]) > self.max_headers else self.app
        started = time.perf_counter()
        status = 0
        bytes_in = 0
        bytes_out = 0
        error_body: bytearray | None = None  # collected only for JSON errors, to read their code

        async def counting_receive() -> Message:
            nonlocal bytes_in
            message = await receive()
            if message["type"] == "http.request":
                bytes_in += len(message.get("body", b""))
            return message

        async def send_with_id(message: Message) -> None:
            nonlocal status, bytes_out, error_body
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = MutableHeaders(scope=message)
                if "x-request-id" not in headers:
                    headers["X-Request-ID"] = request_id
                if status >= 400 and headers.get("content-type", "").startswith("application/json"):
                    error_body = bytearray()
            elif message["type"] == "http.response.body":
                body = message.get("body", b"")
                bytes_out += len(body)
                if error_body is not None and len(error_body) < MAX_ERROR_BODY:
                    error_body += body
            await send(message)

        failed = False
        try:
            await app(scope, counting_receive, send_with_id)
        except BaseException:
            failed = True  # rendered as a 500 by Starlette's outermost handler
            raise
        finally:
            seconds = time.perf_counter() - started
            if failed and not status:
                status, code = 500, "internal_error"
            else:
                code = _error_code(error_body)
            route = getattr(scope.get("route"), "path", "unmatched")
            model = state.get("model", "")
            metrics.observe_request(route, status, model, seconds, code)
            log.info(
                "access",
                extra={
                    "request_id": request_id,
                    "method": scope["method"],
                    "path": scope["path"],
                    "route": route,
                    "status": status,
                    "error_code": code,
                    "account_id": state.get("account_id"),
                    "model": model or None,
                    "bytes_in": bytes_in,
                    "bytes_out": bytes_out,
                    "duration_ms": round(seconds * 1000, 1),
                    "inference_ms": state.get("inference_ms"),
                    "credits_charged": state.get("credits_charged", 0),
                },
            )


def _error_code(body: bytearray | None) -> str | None:
    """The `error.code` of an error response in our JSON shape, if it is one."""
    if not body:
        return None
    try:
        error = json.loads(body).get("error")
    except (ValueError, AttributeError):
        return None
    return error.get("code") if isinstance(error, dict) else None


class BodyLimit:
    """Refuses bodies over `max_bytes` while they stream in, and stalled uploads.

    A declared Content-Length over the limit is refused before reading a byte;
    an undeclared (chunked) body is counted as it arrives. A client that stops
    sending for `read_timeout_s`, or trickles for longer than `deadline_s` in
    all, gets 408 instead of holding the request open.
    """

    def __init__(self, app: ASGIApp, max_bytes: int, read_timeout_s: float, deadline_s: float) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.read_timeout_s = read_timeout_s
        self.deadline_s = deadline_s

    def _too_large(self) -> ApiError:
        # Connection: close, so the server does not read the rest of the body to reuse the connection.
        return payload_too_large(self.max_bytes, headers={"Connection": "close"})

    def _timed_out(self, stalled: bool) -> ApiError:
        if stalled:
            message = f"The upload stalled: no data for {self.read_timeout_s:g} s. Send the body without pausing."
        else:
            message = f"The upload took longer than {self.deadline_s:g} s. Send a smaller image or a faster connection."
        return ApiError("request_timeout", message, headers={"Connection": "close"})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope["headers"]:
            if name == b"content-length" and value.isdigit() and int(value) > self.max_bytes:
                request_id = scope.get("state", {}).get("request_id", "")
                await error_response(request_id, self._too_large())(scope, receive, send)
                return
        received = 0
        body_done = False
        deadline = time.monotonic() + self.deadline_s

        async def limited_receive() -> Message:
            nonlocal received, body_done
            if body_done:  # later receives wait for a disconnect: no deadline there
                return await receive()
            left = deadline - time.monotonic()
            try:
                message = await asyncio.wait_for(receive(), max(0.0, min(self.read_timeout_s, left)))
            except TimeoutError:
                raise self._timed_out(stalled=left > self.read_timeout_s) from None
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise self._too_large()
                body_done = not message.get("more_body", False)
            return message

        await self.app(scope, limited_receive, send)
