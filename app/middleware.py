"""Pure ASGI middleware: request ids and the streaming body limit.

Pure ASGI (not BaseHTTPMiddleware) so the body streams through untouched and
nothing is buffered twice.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.errors import ApiError, error_response, payload_too_large

log = logging.getLogger("cutout.access")


def new_request_id() -> str:
    return "req_" + secrets.token_hex(12)


class RequestContext:
    """Gives every request an id (scope state `request_id`, header X-Request-ID) and logs it."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = new_request_id()
        scope.setdefault("state", {})["request_id"] = request_id
        started = time.perf_counter()
        status = 0

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = MutableHeaders(scope=message)
                if "x-request-id" not in headers:
                    headers["X-Request-ID"] = request_id
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            log.info(
                "%s %s %s %.1fms %s",
                scope["method"],
                scope["path"],
                status or 500,
                (time.perf_counter() - started) * 1000,
                request_id,
            )


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
        err = payload_too_large(self.max_bytes)
        err.headers["Connection"] = "close"
        return err

    def _timed_out(self, stalled: bool) -> ApiError:
        if stalled:
            message = f"The upload stalled: no data for {self.read_timeout_s:g} s. Send the body without pausing."
        else:
            message = f"The upload took longer than {self.deadline_s:g} s. Send a smaller image or a faster connection."
        return ApiError(408, "request_timeout", message, headers={"Connection": "close"})

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
