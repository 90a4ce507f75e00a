"""Graceful shutdown: drain first, then stop.

On SIGTERM (or Ctrl-C) the server keeps listening for a drain period instead
of closing its socket at once: requests already in flight run to the end (and
are charged), new ones get a 503 `shutting_down` with `Connection: close` so
clients and load balancers retry elsewhere, and /ready answers 503. When the
drain period (`shutdown_timeout_s`) runs out, requests still in flight are
cancelled: `billing.charge` refunds them and they too get the 503. Then
uvicorn's own shutdown runs. A second signal skips the drain.
"""

from __future__ import annotations

import asyncio
import signal
import time
from types import FrameType

import anyio
import uvicorn
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.errors import ApiError, error_response

# Answered while draining: orchestrators keep probing and scraping until the end.
PROBE_PATHS = frozenset({"/health", "/ready", "/metrics"})
DRAIN_SIGNALS = (signal.SIGTERM, signal.SIGINT)
# After cancelling overdue requests, how long they get to refund and answer before uvicorn takes over.
CANCEL_GRACE_S = 5.0


class Drain:
    """Shared by the server (which starts the drain) and the app (which tracks its requests)."""

    def __init__(self) -> None:
        self.draining = False
        self.deadline = float("inf")
        self.requests: set[anyio.CancelScope] = set()

    @property
    def in_flight(self) -> int:
        return len(self.requests)

    def begin(self, timeout_s: float) -> None:
        self.draining = True
        self.deadline = time.monotonic() + timeout_s

    def tick(self) -> bool:
        """Cancel requests past the deadline; True once the server can stop."""
        if not self.draining:
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
    response = error_response(scope.get("state", {}).get("request_id", ""), ApiError("shutting_down", message))
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
        if self.drain.draining:
            refuse = _shutting_down(scope, "The server is shutting down; retry and another instance will answer.")
            await refuse(scope, receive, send)
            return
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = True
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

    def __init__(self, config: uvicorn.Config, drain: Drain, timeout_s: float) -> None:
        super().__init__(config)
        self.drain = drain
        self.timeout_s = timeout_s

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if sig in DRAIN_SIGNALS and not self.drain.draining:
            self.drain.begin(self.timeout_s)
            return
        super().handle_exit(sig, frame)

    async def on_tick(self, counter: int) -> bool:
        return self.drain.tick() or await super().on_tick(counter)
