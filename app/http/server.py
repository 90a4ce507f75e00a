"""The HTTP server's protection against hostile connections: uvicorn with h11, plus a head deadline
and a cap on open connections.

Why h11 and not uvicorn's default (httptools): h11 bounds the request head itself
(`h11_max_incomplete_event_size`; httptools accepts a 50 MB header or a million headers), and its
cost per request, tens of microseconds of pure Python, is nothing beside 100+ ms of inference.
uvicorn closes idle keep-alive connections (`timeout_keep_alive`) but neither bounds how long a
client may take to send a request head (slowloris) nor how many connections are open; this
protocol class adds both. Granian and Hypercorn have such settings too, but the drain on SIGTERM
(app.http.shutdown) is built on uvicorn's server.
"""

from __future__ import annotations

import asyncio
import re
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from app.errors import ApiError
from app.http.errors import error_response
from app.http.middleware import new_request_id
from app.http.unsent import UNSENT
from app.settings import Settings

# How often an unread answer's write buffer is looked at.
UNSENT_CHECK_S = 0.5

# The blank line that ends a head (h11 accepts bare LF line ends too).
_HEAD_END = re.compile(rb"\n\r?\n")


def _error_bytes(err: ApiError) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    response = error_response(new_request_id(), err)
    headers = [(name, value) for name, value in response.raw_headers if name != b"content-length"]
    return response.status_code, headers + [(b"connection", b"close")], bytes(response.body)


class GuardedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol, which also:

    - closes a connection that has not sent a complete request head within `head_timeout_s` of
      being opened or of its previous response (slow or absent heads hold no connection), or
      whose body is still coming in that long after an early answer (a 4xx sent before the
      body was read: nobody reads the rest, and trickling it would hold the connection);
    - closes new connections at once while `max_connections` are open;
    - answers a head over the size limit with 431 in our error shape (uvicorn: a plain-text 400),
      however the head arrives (h11 bounds only a head still incomplete);
    - counts the bytes of answers its client has not read yet (app/http/unsent.py), and closes the
      connection when its client has read nothing for `send_timeout_s` (uvicorn has no send timeout:
      an unread answer stayed in memory as long as the client kept the connection).
    """

    head_timeout_s: float = 10.0
    max_connections: int = 1000
    max_head_bytes: int = 16384
    send_timeout_s: float = 30.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._head_deadline: asyncio.TimerHandle | None = None
        # An answer the client is not reading: its bytes as accounted in UNSENT, and when it last read.
        self._unsent = 0
        self._unsent_watch: asyncio.TimerHandle | None = None
        self._last_read_at = 0.0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) > self.max_connections:
            self.transport.close()  # connection_lost removes it from the count
            return
        self._await_head()

    def connection_lost(self, exc: Exception | None) -> None:
        self._head_received()
        self._stop_watching_unsent()
        super().connection_lost(exc)

    def pause_writing(self) -> None:
        # The write buffer is over the transport's high-water mark (64 KB): an answer is waiting for its
        # client to read it. Accounted and watched until it is read.
        super().pause_writing()
        if self._unsent_watch is None:
            UNSENT.change(0, 1)
            self._last_read_at = self.loop.time()
            self._watch_unsent()

    def _watch_unsent(self) -> None:
        self._unsent_watch = None
        # Also once closing: a graceful close (keep-alive or head timeout) keeps the buffer until it is read.
        size = self.transport.get_write_buffer_size()
        if size < self._unsent:
            self._last_read_at = self.loop.time()
        UNSENT.change(size - self._unsent)
        self._unsent = size
        if size == 0:
            UNSENT.change(0, -1)
            return
        if self.loop.time() - self._last_read_at > self.send_timeout_s:
            # The client has read nothing for send_timeout_s: its answer is dropped with the connection.
            self.transport.abort()  # connection_lost releases the bytes
        self._unsent_watch = self.loop.call_later(UNSENT_CHECK_S, self._watch_unsent)

    def _stop_watching_unsent(self) -> None:
        if self._unsent_watch is not None:
            self._unsent_watch.cancel()
            self._unsent_watch = None
            UNSENT.change(-self._unsent, -1)
            self._unsent = 0

    def _await_head(self) -> None:
        self._head_received()
        self._head_deadline = self.loop.call_later(self.head_timeout_s, self._head_timed_out)

    def _head_received(self) -> None:
        if self._head_deadline is not None:
            self._head_deadline.cancel()
            self._head_deadline = None

    def _waiting_on_client(self) -> bool:
        """No request to answer: before a head, or a body still arriving after its answer."""
        return self.conn.their_state is h11.IDLE or (
            self.conn.their_state is h11.SEND_BODY and self.conn.our_state is h11.DONE
        )

    def _head_timed_out(self) -> None:
        self._head_deadline = None
        if self._waiting_on_client() and not self.transport.is_closing():
            self.transport.close()  # nothing left to answer

    def handle_events(self) -> None:
        super().handle_events()
        if not self._waiting_on_client():
            self._head_received()  # a whole head arrived: the body has its own timeouts (BodyLimit)

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing() and self._waiting_on_client():
            self._await_head()

    def _head_too_large(self) -> ApiError:
        return ApiError(
            "request_head_too_large",
            f"The request head (request line and headers) is over {self.max_head_bytes} bytes.",
        )

    def data_received(self, data: bytes) -> None:
        # h11's limit applies to a head still incomplete: one that arrives whole in a single read, however
        # long, would pass. Before a request, the head must end within max_head_bytes of its start.
        if self.conn.their_state is h11.IDLE and self._head_over_limit(data):
            status, headers, body = _error_bytes(self._head_too_large())
            reason = b"Request Header Fields Too Large"
            head = b"HTTP/1.1 %d %s\r\n" % (status, reason) + b"".join(b"%s: %s\r\n" % pair for pair in headers)
            self.transport.write(head + b"content-length: %d\r\n\r\n" % len(body) + body)
            self.transport.close()
            return
        super().data_received(data)

    def _head_over_limit(self, data: bytes) -> bool:
        limit = self.max_head_bytes + 4
        buffered = self.conn.trailing_data[0]  # under the limit: h11 refuses a longer incomplete head
        start = (buffered + data[: limit + 1]).lstrip(b"\r\n")  # h11 skips blank lines before a request
        return len(start) > limit and _HEAD_END.search(start, 0, limit) is None

    def send_400_response(self, msg: str) -> None:
        if self.conn.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
            # Our answer has gone out already (a 4xx sent before the body was read) and the rest of the
            # body breaks HTTP: there is nothing to answer, only the connection to close. (Sending a
            # second response raised inside the transport's callback: a traceback per request.)
            self.transport.close()
            return
        buffered = len(self.conn.trailing_data[0])
        if buffered > self.max_head_bytes:
            err = self._head_too_large()
        else:
            err = ApiError("invalid_parameter", "The request is not valid HTTP/1.1.")
        status, headers, body = _error_bytes(err)
        # h11 still lets us answer after the client's protocol error, as uvicorn's own 400 does.
        output = self.conn.send(h11.Response(status_code=status, headers=headers))
        output += self.conn.send(h11.Data(data=body)) + self.conn.send(h11.EndOfMessage())
        self.transport.write(output)
        self.transport.close()


def protocol_for(settings: Settings) -> type[GuardedH11Protocol]:
    """The protocol class with this configuration (uvicorn instantiates it per connection)."""
    return type(
        "ConfiguredH11Protocol",
        (GuardedH11Protocol,),
        {
            "head_timeout_s": settings.head_timeout_s,
            "max_connections": settings.max_connections,
            "max_head_bytes": settings.max_head_bytes,
            "send_timeout_s": settings.send_timeout_s,
        },
    )


def server_options(settings: Settings) -> dict[str, Any]:
    """uvicorn.Config keyword arguments for the connection limits."""
    return {
        "http": protocol_for(settings),
        "h11_max_incomplete_event_size": settings.max_head_bytes,
        "timeout_keep_alive": settings.keep_alive_timeout_s,
        # Client addresses come from forwarding headers only when the peer is a configured trusted
        # proxy (app.http.client_address); uvicorn's own handling trusts 127.0.0.1 by default.
        "proxy_headers": False,
    }
