"""Webhooks as the Standard Webhooks specification signs them (https://www.standardwebhooks.com/).

Each delivery is a POST of JSON with three headers:
    webhook-id          the message id: the same on every retry of one event (receivers dedupe on it)
    webhook-timestamp   Unix seconds of this attempt
    webhook-signature   "v1," + base64(HMAC-SHA256(key, f"{id}.{timestamp}.{body}")), where the key is the
                        base64 after `whsec_` in the account's secret (GET /v2/account shows it)

The target passes the address guard of `image_url` (`fetch_allow`): checked at submission, and
again at each connection (the connection goes to the address checked, as for image_url).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import json
import socket
import time
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit

import anyio
import httpcore

from app.errors import ApiError
from app.http.client_address import parse_networks
from app.removal import fetch
from app.settings import Settings

USER_AGENT = "Cutout-Webhooks/1"
MAX_BACKOFF_S = 600.0


class _Refused(Exception):
    pass


class _GuardedBackend(httpcore.AsyncNetworkBackend):
    """Resolves once, refuses an address image_url's guard refuses, connects to the address it checked
    (no second lookup a rebinding DNS server could answer differently)."""

    def __init__(self, allow: Sequence[fetch.IPNetwork]) -> None:
        self._allow = allow
        self._inner = httpcore.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Any = None,
    ) -> httpcore.AsyncNetworkStream:
        name = host.strip("[]")
        infos = await anyio.getaddrinfo(name, port, type=socket.SOCK_STREAM)
        addresses = list(dict.fromkeys(ipaddress.ip_address(str(info[4][0]).split("%")[0]) for info in infos))
        refused = [ip for ip in addresses if not fetch.address_allowed(ip, self._allow)]
        if refused or not addresses:
            raise _Refused(
                f"{name[:80]} resolves to {refused[0] if refused else 'no address'}, an address we do not call"
            )
        return await self._inner.connect_tcp(str(addresses[0]), port, timeout, local_address, socket_options)

    async def sleep(self, seconds: float) -> None:
        await anyio.sleep(seconds)


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    key = base64.b64decode(secret.removeprefix("whsec_"))
    signed = f"{msg_id}.{timestamp}.".encode() + body
    return "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode("ascii")


def forbidden(message: str) -> ApiError:
    return ApiError("webhook_url_forbidden", message)


async def check_target(url: str, settings: Settings) -> str:
    """The webhook URL, or a 400 when it is not http(s) or its host resolves to an address we do not call."""
    if not settings.fetch_enabled:
        raise forbidden("This server makes no outbound request (fetch_enabled is off): poll the job instead.")
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        raise forbidden("webhook_url is not a valid URL.") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise forbidden("webhook_url must be an http or https URL with a host.")
    if parts.username is not None or parts.password is not None:
        raise forbidden("webhook_url may not carry a user name or password.")
    allow = parse_networks(settings.fetch_allow)
    try:
        with anyio.fail_after(settings.fetch_connect_timeout_s):
            infos = await anyio.getaddrinfo(parts.hostname, parts.port or 443, type=socket.SOCK_STREAM)
    except (OSError, TimeoutError):
        raise forbidden(f"The host {parts.hostname[:80]!r} of webhook_url could not be resolved.") from None
    for info in infos:
        ip = ipaddress.ip_address(str(info[4][0]).split("%")[0])
        if not fetch.address_allowed(ip, allow):
            raise forbidden(
                f"webhook_url points at {parts.hostname[:80]!r} ({ip}), an address we do not call (loopback, "
                "private, link-local or reserved). Use a public URL."
            )
    return url


async def deliver(url: str, secret: str, msg_id: str, payload: dict[str, Any], settings: Settings) -> dict[str, Any]:
    """One attempt: what is recorded on the job (when, the HTTP status or the error, how long)."""
    body = json.dumps(payload, separators=(",", ":")).encode()
    timestamp = int(time.time())
    parts = urlsplit(url)
    headers = [
        (b"Host", parts.netloc.rpartition("@")[2].encode("idna")),
        (b"User-Agent", USER_AGENT.encode()),
        (b"Content-Type", b"application/json"),
        (b"webhook-id", msg_id.encode()),
        (b"webhook-timestamp", str(timestamp).encode()),
        (b"webhook-signature", sign(secret, msg_id, timestamp, body).encode()),
    ]
    timeout = settings.webhook_timeout_s
    timeouts = {"connect": timeout, "read": timeout, "write": timeout, "pool": timeout}
    started = time.monotonic()
    attempt: dict[str, Any] = {"at": time.time(), "status": None, "error": None}
    pool = httpcore.AsyncConnectionPool(
        ssl_context=fetch._ssl_context(),
        network_backend=_GuardedBackend(parse_networks(settings.fetch_allow)),
        retries=0,
        max_connections=1,
    )
    try:
        with anyio.fail_after(timeout):
            async with pool:
                response = await pool.request(
                    "POST", url, headers=headers, content=body, extensions={"timeout": timeouts}
                )
                attempt["status"] = response.status
                if not 200 <= response.status < 300:
                    attempt["error"] = f"HTTP {response.status}"
    except _Refused as err:  # the guard refused the address it resolved now
        attempt["error"] = f"refused: {err}"
    except TimeoutError:
        attempt["error"] = f"no answer within {timeout:g} s"
    except (httpcore.TimeoutException, httpcore.NetworkError, httpcore.ProtocolError, OSError) as err:
        attempt["error"] = f"connection failed: {type(err).__name__}"
    attempt["duration_ms"] = round((time.monotonic() - started) * 1000, 1)
    return attempt


def next_delay(attempt_count: int, settings: Settings) -> float:
    """Exponential backoff: webhook_backoff_s, then doubling, at most MAX_BACKOFF_S."""
    return float(min(settings.webhook_backoff_s * 2 ** max(0, attempt_count - 1), MAX_BACKOFF_S))
