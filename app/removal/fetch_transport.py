"""The h11 transport of an `image_url` fetch: one GET to an address the guard checked
(app/removal/fetch.py), its answer read within bounds of work as well as of bytes, redirects
followed (each URL checked again), the whole in a thread of its own that stops when the caller does.
"""

from __future__ import annotations

import functools
import socket
import ssl
import threading
import time
from collections.abc import Sequence
from urllib.parse import urljoin, urlsplit

import anyio
import h11

from app.errors import ApiError
from app.removal.fetch import (
    MAX_REDIRECTS,
    IPNetwork,
    _check_url,
    _ssl_context,
    connect,
    too_large,
    unreachable,
)

USER_AGENT = "Cutout-ImageFetcher/1"

# Framing limits of an upstream's answer. A 25 MB image in 1448-byte TCP segments is ~18000 reads;
# chunked encoders write chunks of KBs. Past a fixed allowance, every read and event must bring
# READ_BYTES_EACH bytes of body on average: a hostile upstream's 1-byte chunks, 1xx floods or chunk
# extensions are refused after a few thousand steps (~0.1 CPU s) instead of parsed for 20 s.
MAX_RESPONSE_HEAD_BYTES = 32768
MAX_INFORMATIONAL = 8
FRAMING_ALLOWANCE = 4096
READ_BYTES_EACH = 512
# Bytes on the wire beyond the body and an eighth of it (head, chunk headers and extensions, 1xx answers).
WIRE_OVERHEAD_BYTES = 1 << 20
READ_BYTES = 65536
# A blocked read wakes up this often to see whether the client left or the deadline passed.
POLL_S = 0.2


class _Stopped(Exception):
    """The caller stopped waiting (its client hung up, or the deadline passed)."""


class _Budget:
    """What one answer may cost: reads, events and wire bytes, against the body they bring."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.steps = 0
        self.wire = 0
        self.body = 0

    def _refuse(self) -> ApiError:
        return unreachable(
            "image_url's answer came in too many pieces or with too much framing for its size (tiny "
            "chunks or reads, chunk extensions, 1xx answers): it is not what a web server sends."
        )

    def step(self) -> None:
        self.steps += 1
        if self.steps > FRAMING_ALLOWANCE + self.body // READ_BYTES_EACH:
            raise self._refuse()

    def read(self, size: int) -> None:
        self.wire += size
        # Framing (head, chunk headers and extensions, 1xx answers) beyond a fixed allowance must stay
        # a small share of the body: chunks of 80 bytes or more.
        if self.wire > WIRE_OVERHEAD_BYTES + self.body + self.body // 8:
            raise self._refuse()
        self.step()


def _get(
    url: str,
    host: bytes,
    allow: Sequence[IPNetwork],
    max_bytes: int,
    connect_timeout_s: float,
    deadline: float,
    stopped: threading.Event,
) -> bytes | str:
    """The body of a 200, or the next URL of a redirect (blocking: runs in a thread)."""
    parts = urlsplit(url)
    https = parts.scheme == "https"
    assert parts.hostname is not None
    port = parts.port or (443 if https else 80)
    left = deadline - time.monotonic()
    if left <= 0 or stopped.is_set():
        raise _Stopped()
    sock = connect(parts.hostname, port, allow, min(connect_timeout_s, left))
    try:
        if https:
            sock.settimeout(max(0.001, deadline - time.monotonic()))
            sock = _ssl_context().wrap_socket(sock, server_hostname=parts.hostname.strip("[]"))
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        conn = h11.Connection(h11.CLIENT, max_incomplete_event_size=MAX_RESPONSE_HEAD_BYTES)
        headers = [
            (b"Host", host),
            (b"User-Agent", USER_AGENT.encode()),
            (b"Accept", b"image/*"),
            (b"Accept-Encoding", b"identity"),
            (b"Connection", b"close"),
        ]
        sock.settimeout(max(0.001, deadline - time.monotonic()))
        sock.sendall(conn.send(h11.Request(method="GET", target=target.encode(), headers=headers)) or b"")
        sock.sendall(conn.send(h11.EndOfMessage()) or b"")
        return _receive(sock, conn, url, _Budget(max_bytes), deadline, stopped)
    finally:
        sock.close()


def _receive(
    sock: socket.socket, conn: h11.Connection, url: str, budget: _Budget, deadline: float, stopped: threading.Event
) -> bytes | str:
    body = bytearray()
    informational = 0
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            data = _read(sock, deadline, stopped)
            budget.read(len(data))
            conn.receive_data(data)
            continue
        budget.step()
        if isinstance(event, h11.InformationalResponse):
            informational += 1
            if informational > MAX_INFORMATIONAL:
                raise unreachable(f"image_url answered more than {MAX_INFORMATIONAL} interim (1xx) responses.")
        elif isinstance(event, h11.Response):
            fields = {name.lower(): value for name, value in event.headers}
            if event.status_code in (301, 302, 303, 307, 308):
                location = fields.get(b"location")
                if not location:
                    raise unreachable(f"image_url answered a redirect ({event.status_code}) without a Location.")
                return urljoin(url, location.decode("latin-1"))
            if event.status_code != 200:
                raise unreachable(f"image_url answered HTTP {event.status_code}; we need 200 with the image.")
            declared = fields.get(b"content-length")
            if declared is not None and declared.strip().isdigit() and int(declared) > budget.max_bytes:
                raise too_large(budget.max_bytes)
        elif isinstance(event, h11.Data):
            body += event.data
            budget.body = len(body)
            if len(body) > budget.max_bytes:
                raise too_large(budget.max_bytes)
        elif isinstance(event, h11.EndOfMessage):
            return bytes(body)
        else:  # ConnectionClosed before the end of the body
            raise unreachable("image_url closed the connection before the end of the image.")


def _read(sock: socket.socket, deadline: float, stopped: threading.Event) -> bytes:
    """The next bytes from the upstream; wakes every POLL_S to honour the deadline and the caller."""
    while True:
        if stopped.is_set():
            raise _Stopped()
        left = deadline - time.monotonic()
        if left <= 0:
            raise _Stopped()
        sock.settimeout(min(left, POLL_S))
        try:
            return sock.recv(READ_BYTES)  # b"" at the upstream's close: h11 sees the end of the data
        except TimeoutError:
            continue


def _fetch_blocking(
    url: str,
    allow: Sequence[IPNetwork],
    max_bytes: int,
    connect_timeout_s: float,
    deadline: float,
    stopped: threading.Event,
) -> bytes:
    for _ in range(MAX_REDIRECTS + 1):
        url, host = _check_url(url)
        result = _get(url, host, allow, max_bytes, connect_timeout_s, deadline, stopped)
        if isinstance(result, bytes):
            return result
        url = result
    raise unreachable(f"image_url redirected more than {MAX_REDIRECTS} times.")


_limiter: anyio.CapacityLimiter | None = None


def _threads() -> anyio.CapacityLimiter:
    # Fetches wait on the network for seconds: they have threads of their own, so they never hold
    # the default pool's tokens that header checks and JSON parsing need.
    global _limiter
    if _limiter is None:
        _limiter = anyio.CapacityLimiter(FETCH_THREADS)
    return _limiter


FETCH_THREADS = 64


async def fetch_image(
    url: str, *, allow: Sequence[IPNetwork], max_bytes: int, connect_timeout_s: float, total_timeout_s: float
) -> bytes:
    """The bytes at url (following up to MAX_REDIRECTS checked redirects), or a 400 ApiError.

    Cancelling the caller (its client hung up) stops the fetch at its next read, within POLL_S."""
    stopped = threading.Event()
    deadline = time.monotonic() + total_timeout_s
    job = functools.partial(_fetch_blocking, url, allow, max_bytes, connect_timeout_s, deadline, stopped)
    try:
        with anyio.fail_after(total_timeout_s + POLL_S):
            return await anyio.to_thread.run_sync(job, abandon_on_cancel=True, limiter=_threads())
    except (TimeoutError, _Stopped):
        raise unreachable(f"Fetching image_url took longer than {total_timeout_s:g} s.") from None
    except h11.ProtocolError:
        raise unreachable(
            "image_url could not be fetched: the answer was not valid HTTP (or its head was over "
            f"{MAX_RESPONSE_HEAD_BYTES} bytes)."
        ) from None
    except (OSError, ssl.SSLError, UnicodeError):
        raise unreachable(
            "image_url could not be fetched: the connection failed or the answer was not valid HTTP."
        ) from None
    finally:
        stopped.set()  # a thread still running (the caller was cancelled) stops at its next read
