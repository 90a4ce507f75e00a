"""Pure ASGI middleware: request ids with access logs and metrics, and the streaming body limit.

Pure ASGI (not BaseHTTPMiddleware) so the body streams through untouched and
nothing is buffered twice.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from starlette.datastructures import Headers, MutableHeaders
from starlette.middleware.cors import CORSMiddleware
from starlette.responses import RedirectResponse
from starlette.routing import Match, Route, Router
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.errors import ApiError, payload_too_large
from app.http import context, metrics
from app.http.client_address import client_address, parse_networks
from app.http.errors import error_response

log = logging.getLogger("cutout.access")


# Machines asking many times a minute (load balancers, kubelets, Prometheus): their successful
# answers are logged at debug, not info; a failed probe (503 while draining) stays at info.
PROBE_ROUTES = frozenset({"/health", "/ready", "/metrics"})


class AliasRoute(Route):
    """A second spelling of a route (`/v2/rembg` for `/v2/rembg/`), answered directly (no redirect:
    a redirected POST loses its body in many clients) and logged and counted as the route it spells."""

    def __init__(self, path: str, canonical: str, endpoint: Callable[..., Any], *, methods: list[str]) -> None:
        super().__init__(path, endpoint, methods=methods)
        self.canonical = canonical


def route_label(route: object) -> str:
    """The route template a request matched, one per route whatever its spelling; `unmatched` for 404s."""
    if isinstance(route, AliasRoute):
        return route.canonical
    path = getattr(route, "path", None)  # a Route's or a Mount's template
    return path if isinstance(path, str) else "unmatched"


def new_request_id() -> str:
    return "req_" + secrets.token_hex(12)


class RequestContext:
    """Gives every request an id (header X-Request-ID) and its typed info (app/http/context.py: the id
    and the client address), then writes its JSON access log line and counts it in the metrics.

    Handlers and error responses fill in what only they know: the account, the
    model, the inference time, the credits charged, the error code.
    """

    def __init__(
        self,
        app: ASGIApp,
        max_headers: int = 100,
        trusted_proxies: list[str] | None = None,
        proxy_header: str = "x-forwarded-for",
    ) -> None:
        self.app = app
        self.max_headers = max_headers
        self.trusted_proxies = parse_networks(trusted_proxies or [])
        self.proxy_header = proxy_header

    def _client_address(self, scope: Scope) -> str:
        peer = scope["client"][0] if scope.get("client") else "unknown"
        if not self.trusted_proxies:
            return peer
        wanted = self.proxy_header.encode()
        # Repeated lines of the header form one list.
        value = ", ".join(v.decode("latin-1") for name, v in scope["headers"] if name == wanted)
        return client_address(peer, self.proxy_header, value, self.trusted_proxies)

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
        # The address rate limits count against (auth failures): see app.http.client_address.
        info = context.start(scope, request_id, self._client_address(scope))
        app = self._too_many_headers(request_id) if len(scope["headers"]) > self.max_headers else self.app
        exchange = _Exchange(request_id, receive, send)
        started = time.perf_counter()
        failed = False
        try:
            await app(scope, exchange.receive, exchange.send)
        except BaseException:
            failed = True  # rendered as a 500 by Starlette's outermost handler
            raise
        finally:
            if failed and not exchange.status:
                exchange.status, info.error_code = 500, "internal_error"
            _account_for(scope, info, exchange, time.perf_counter() - started)


@dataclass
class _Exchange:
    """One request's receive and send, counted, with X-Request-ID added to the answer."""

    request_id: str
    _receive: Receive
    _send: Send
    status: int = 0
    bytes_in: int = 0
    bytes_out: int = 0

    async def receive(self) -> Message:
        message = await self._receive()
        if message["type"] == "http.request":
            self.bytes_in += len(message.get("body", b""))
        return message

    async def send(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.status = message["status"]
            headers = MutableHeaders(scope=message)
            if "x-request-id" not in headers:
                headers["X-Request-ID"] = self.request_id
        elif message["type"] == "http.response.body":
            self.bytes_out += len(message.get("body", b""))
        await self._send(message)


def _account_for(scope: Scope, info: context.RequestInfo, exchange: _Exchange, seconds: float) -> None:
    """The request's metrics and its JSON access log line."""
    route = route_label(scope.get("route"))
    metrics.observe_request(route, exchange.status, info.model or "", seconds, info.error_code)
    log.log(
        logging.DEBUG if route in PROBE_ROUTES and exchange.status == 200 else logging.INFO,
        "access",
        extra={
            "request_id": exchange.request_id,
            "method": scope["method"],
            "path": scope["path"],
            "route": route,
            "status": exchange.status,
            "error_code": info.error_code,
            "account_id": info.account_id,
            "model": info.model,
            "bytes_in": exchange.bytes_in,
            "bytes_out": exchange.bytes_out,
            "duration_ms": round(seconds * 1000, 1),
            "inference_ms": info.inference_ms,
            "credits_charged": info.credits_charged,
        },
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
                await error_response(context.of_scope(scope).request_id, self._too_large())(scope, receive, send)
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


class Cors(CORSMiddleware):
    """Starlette's CORS middleware, whose refused preflights answer in our error shape
    (Starlette's own: a plain-text 400) so that a client can read why."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = Headers(scope=scope) if scope["type"] == "http" else None
        is_preflight = (
            headers is not None
            and scope["method"] == "OPTIONS"
            and "origin" in headers
            and "access-control-request-method" in headers
        )
        if not is_preflight:
            await super().__call__(scope, receive, send)
            return
        assert headers is not None
        response = self.preflight_response(request_headers=headers)
        if response.status_code == 400:
            reason = bytes(response.body).decode(errors="replace")[:200]
            err = ApiError(
                "invalid_parameter",
                f"The CORS preflight was refused ({reason}); the server's allowed origins are set by CUTOUT_CORS_ORIGINS.",
                headers={"Vary": response.headers.get("vary", "Origin")},
            )
            response = error_response(context.of_scope(scope).request_id, err)
        await response(scope, receive, send)


def relative_slash_redirects(router: Router) -> None:
    """Starlette's trailing-slash redirect (`/metrics/` -> `/metrics`, `/v2/rembg` -> `/v2/rembg/`), answered
    with a relative Location. Starlette's own builds an absolute URL from the client's Host header
    (`Host: evil.example` -> `http://evil.example/metrics`): a redirect anyone could aim elsewhere."""
    router.redirect_slashes = False
    not_found = router.default

    async def default(scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "/")
        if scope["type"] == "http" and path != "/":
            other = path.rstrip("/") if path.endswith("/") else path + "/"
            moved = {**scope, "path": other}
            # Never "//host...": a Location of two slashes names another host.
            matched = any(route.matches(moved)[0] is not Match.NONE for route in router.routes)
            if matched and not other.startswith("//"):
                query = scope.get("query_string", b"").decode("latin-1")
                location = quote(other, safe="/:@!$&'()*+,;=-._~") + (f"?{query}" if query else "")
                await RedirectResponse(location)(scope, receive, send)
                return
        await not_found(scope, receive, send)

    router.default = default
