"""Fetching a client's `image_url` without letting it reach inside our network (SSRF).

- http and https only, no credentials in the URL; at most MAX_REDIRECTS redirects,
  each new URL checked from scratch.
- The host is resolved once (in a thread: the event loop never blocks), every address it
  resolves to is checked, and the connection goes to that checked address: there is no
  second lookup a rebinding DNS server could answer differently. TLS still verifies the
  certificate against the host name.
- Loopback, private, link-local, CGNAT, multicast, reserved and unspecified addresses,
  IPv4 and IPv6 (also IPv4 inside IPv6: mapped, 6to4, Teredo, NAT64), are refused unless
  an operator's allowlist (`fetch_allow`, CIDRs) names them.
- The body streams in under the upload size limit; connect and total timeouts.
  The Content-Type is ignored: the bytes are sniffed later like any upload.
- The answer's framing is bounded in work, not only in body bytes: the response head's size, the
  number of 1xx answers, reads and h11 events (1-byte chunks, 16 KB chunk extensions), and the bytes
  on the wire. The whole fetch runs in a thread of its own (h11 parses in Python: never on the
  event loop), which stops at its next read when the client hangs up or the deadline passes.

Failures are 400s with their own codes and are never charged (nothing is reserved yet).
"""

from __future__ import annotations

import functools
import ipaddress
import socket
import ssl
import threading
import time
from collections.abc import Sequence
from urllib.parse import quote, urljoin, urlsplit, urlunsplit

import anyio
import h11

from app.errors import ApiError, invalid_parameter

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

MAX_REDIRECTS = 3
# Characters a URL's path and query keep as they are; anything else (non-ASCII) is percent-encoded.
_URL_SAFE = "/%:@!$&'()*+,;=?~"
USER_AGENT = "Cutout-ImageFetcher/1"
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
_CGNAT = ipaddress.IPv4Network("100.64.0.0/10")


def forbidden(message: str) -> ApiError:
    return ApiError("image_url_forbidden", message)


def unreachable(message: str) -> ApiError:
    return ApiError("image_url_unreachable", message)


def too_large(limit: int) -> ApiError:
    return ApiError("image_url_too_large", f"The image at image_url is larger than the limit of {limit} bytes.")


def _embedded_ipv4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip.teredo is not None:
        return ip.teredo[1]  # the client's address
    if ip in _NAT64:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


def _public(ip: IPAddress) -> bool:
    if isinstance(ip, ipaddress.IPv6Address) and (inner := _embedded_ipv4(ip)) is not None:
        return _public(inner)
    if isinstance(ip, ipaddress.IPv4Address) and ip in _CGNAT:
        return False
    special = ip.is_private or ip.is_loopback or ip.is_link_local or ip.is_multicast
    return ip.is_global and not (special or ip.is_reserved or ip.is_unspecified)


def address_allowed(ip: IPAddress, allow: Sequence[IPNetwork] = ()) -> bool:
    """True when we may connect to ip: a public unicast address, or one the operator allowlisted."""
    candidates = [ip]
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        candidates.append(ip.ipv4_mapped)
    if any(c in net for c in candidates for net in allow if c.version == net.version):
        return True
    return _public(ip)


def _check_url(url: str) -> tuple[str, bytes]:
    """The URL in ASCII (IDNA host, percent-encoded path) and its Host header, or a 400."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        raise invalid_parameter("image_url is not a valid URL.") from None
    if parts.scheme not in ("http", "https"):
        raise forbidden(f"image_url must be an http or https URL; got {parts.scheme[:10] or 'no'} scheme.")
    if not parts.hostname:
        raise invalid_parameter("image_url has no host.")
    if parts.username is not None or parts.password is not None:
        raise invalid_parameter("image_url may not carry a user name or password.")
    host = parts.netloc.rpartition("@")[2]
    try:
        ascii_host = host.encode("idna") if not host.isascii() else host.encode()
    except UnicodeError:  # an empty or over-long label
        raise invalid_parameter("image_url's host name is not valid.") from None
    path, query = quote(parts.path, safe=_URL_SAFE), quote(parts.query, safe=_URL_SAFE)
    return urlunsplit((parts.scheme, ascii_host.decode(), path, query, "")), ascii_host


@functools.cache
def _ssl_context() -> ssl.SSLContext:
    # Built once: loading the CA bundle takes tens of ms, and a context is shared safely.
    return ssl.create_default_context()


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


def _connect(host: str, port: int, allow: Sequence[IPNetwork], timeout: float) -> socket.socket:
    """Resolves once, refuses forbidden addresses, connects to the address it checked."""
    name = host.strip("[]")
    try:
        infos = socket.getaddrinfo(name, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError):
        raise unreachable(f"The host {name[:80]!r} of image_url could not be resolved.") from None
    addresses = list(dict.fromkeys(ipaddress.ip_address(str(info[4][0]).split("%")[0]) for info in infos))
    refused = [ip for ip in addresses if not address_allowed(ip, allow)]
    if refused or not addresses:
        raise forbidden(
            f"image_url points at {name[:80]!r} ({refused[0] if refused else 'no address'}), an address "
            "we do not fetch from (loopback, private, link-local or reserved). Use a public URL."
        )
    error: Exception | None = None
    for ip in addresses:
        try:
            return socket.create_connection((str(ip), port), timeout=timeout)
        except TimeoutError:
            error = unreachable("image_url did not answer in time.")
        except OSError as exc:
            error = exc
    assert error is not None
    raise error


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
    sock = _connect(parts.hostname, port, allow, min(connect_timeout_s, left))
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
