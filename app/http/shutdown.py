"""Graceful shutdown: drain first, then stop.

On SIGTERM the server keeps listening instead of closing its socket at once,
in two phases, the pattern load balancers and Kubernetes' preStop expect:

1. For `drain_delay_s` /ready answers 503 while new requests are still
   accepted and served: a load balancer needs a few health checks to take the
   replica out of rotation, and what it sends meanwhile must not fail.
2. Then new requests get a 503 `shutting_down` with `Connection: close`, and
   requests in flight run to the end (and are charged).

`shutdown_timeout_s`, counted from the signal, bounds both: requests still in
flight then are cancelled (`billing.charge` refunds them, they too get the
503) and uvicorn's own shutdown runs. Ctrl-C (SIGINT) skips phase 1: no load
balancer waits on a terminal. A second signal stops at once.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
import time
from types import FrameType

import anyio
import uvicorn
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.errors import ApiError
from app.http import context
from app.http.errors import error_response

log = logging.getLogger("cutout")

# Answered while draining: orchestrators keep probing and scraping until the end.
PROBE_PATHS = frozenset({"/health", "/ready", "/metrics"})
DRAIN_SIGNALS = (signal.SIGTERM, signal.SIGINT)
# After cancelling overdue requests, how long they get to refund and answer before uvicorn takes over.
CANCEL_GRACE_S = 5.0


class Drain:
    """Shared by the server (which starts the drain) and the app (which tracks its requests)."""

    def __init__(self) -> None:
        self.draining = False  # /ready says 503 from here on
        self.refuse_from = float("inf")
        self.deadline = float("inf")
        self.requests: set[anyio.CancelScope] = set()

    @property
    def in_flight(self) -> int:
        return len(self.requests)

    @property
    def refusing(self) -> bool:
        return time.monotonic() >= self.refuse_from

    def begin(self, delay_s: float, timeout_s: float) -> None:
        now = time.monotonic()
        self.draining = True
        self.refuse_from = now + min(delay_s, timeout_s)
        self.deadline = now + timeout_s

    def tick(self) -> bool:
        """Cancel requests past the deadline; True once the server can stop."""
        if not self.draining or not self.refusing:
            return False
        overdue_s = time.monotonic() - self.deadline
        if overdue_s >= 0:
            for request in self.requests:
                request.cancel()
        return not self.requests or overdue_s >= CANCEL_GRACE_S

    async def settled(self, timeout_s: float) -> None:
        """Wait (bounded) for requests to end: cancelled ones may still be landing their refunds."""
        deadline = time.monotonic() + timeout_s
        while self.requests and time.monotonic() < deadline:
            await asyncio.sleep(0.05)


def _shutting_down(scope: Scope, message: str) -> ASGIApp:
    response = error_response(context.of_scope(scope).request_id, ApiError("shutting_down", message))
    response.headers["Connection"] = "close"
    return response


class DrainGate:
    """ASGI middleware: tracks requests in flight so a drain can wait for them or cancel them,
    and refuses new ones once draining."""

    def __init__(self, app: ASGIApp, drain: Drain) -> None:
        self.app = app
        self.drain = drain

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in PROBE_PATHS:
            await self.app(scope, receive, send)
            return
        if self.drain.refusing:
            refuse = _shutting_down(scope, "The server is shutting down; retry and another instance will answer.")
            await refuse(scope, receive, send)
            return
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = True
            if message["type"] == "http.response.start" and self.drain.draining:
                # A keep-alive client would send its next request here until we refuse; closing
                # makes it reconnect, and the balancer sends it to a replica still ready.
                message = {**message, "headers": [*message.get("headers", []), (b"connection", b"close")]}
            await send(message)

        cancel_scope = anyio.CancelScope()
        self.drain.requests.add(cancel_scope)
        try:
            with cancel_scope:
                await self.app(scope, receive, tracking_send)
            if cancel_scope.cancelled_caught and not started:
                cut_off = _shutting_down(
                    scope, "The server shut down before your request finished; nothing was charged. Retry it."
                )
                await cut_off(scope, receive, send)
        finally:
            self.drain.requests.discard(cancel_scope)


class DrainingServer(uvicorn.Server):
    """uvicorn.Server whose first exit signal drains (see module doc) instead of stopping at once."""

    def __init__(self, config: uvicorn.Config, drain: Drain, delay_s: float, timeout_s: float) -> None:
        super().__init__(config)
        self.drain = drain
        self.delay_s = delay_s
        self.timeout_s = timeout_s

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if sig in DRAIN_SIGNALS and not self.drain.draining:
            self.drain.begin(self.delay_s if sig == signal.SIGTERM else 0.0, self.timeout_s)
            return
        super().handle_exit(sig, frame)

    async def on_tick(self, counter: int) -> bool:
        return self.drain.tick() or await super().on_tick(counter)

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.started and not self.should_exit:
            demo, docs = page_urls(self.config.host, self.config.port, self.servers)
            log.info("demo page: %s  API reference: %s", demo, docs, extra={"demo_url": demo, "docs_url": docs})


def page_urls(host: str, port: int, servers: list[asyncio.base_events.Server]) -> tuple[str, str]:
    """Where a person on this machine opens /demo and /docs: the port actually bound (port 0: the
    one the system chose), and localhost for an address that means every interface."""
    for server in servers:
        for sock in server.sockets:
            port = sock.getsockname()[1]
            break
    shown = "localhost" if host in ("0.0.0.0", "::", "") else f"[{host}]" if ":" in host else host
    base = f"http://{shown}:{port}"
    return f"{base}/demo", f"{base}/docs"
