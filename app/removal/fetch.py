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

This module is the guard: what may be fetched (the URL, the addresses) and the connection to a
checked address. The h11 transport that reads the answer within its bounds, follows redirects and
runs in a thread of its own is app/removal/fetch_transport.py (`fetch_image`).
"""

from __future__ import annotations

import functools
import ipaddress
import socket
import ssl
from collections.abc import Sequence
from urllib.parse import quote, urlsplit, urlunsplit

from app.errors import ApiError, invalid_parameter

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

MAX_REDIRECTS = 3
# Characters a URL's path and query keep as they are; anything else (non-ASCII) is percent-encoded.
_URL_SAFE = "/%:@!$&'()*+,;=?~"
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


def connect(host: str, port: int, allow: Sequence[IPNetwork], timeout: float) -> socket.socket:
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
