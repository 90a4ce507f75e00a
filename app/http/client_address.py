"""The client's address: the peer's, unless the peer is a trusted proxy that says who it forwards for.

Anyone can write `X-Forwarded-For` or `Forwarded`, so they are read only from peers listed in
`trusted_proxies` (empty by default). Through a chain of proxies the client is the right-most
address that is not itself a trusted proxy: the entries to its left were written by the client.
"""

from __future__ import annotations

import ipaddress
import re

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

# for=192.0.2.1, for="[2001:db8::1]:4711", for=unknown (RFC 7239)
_FORWARDED_FOR = re.compile(r'for\s*=\s*"?\[?([^\]";,\s]+)', re.IGNORECASE)


def parse_networks(entries: list[str]) -> list[Network]:
    return [ipaddress.ip_network(entry.strip(), strict=False) for entry in entries if entry.strip()]


def _is_trusted(address: str, trusted: list[Network]) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in network for network in trusted)


def _strip_port(entry: str) -> str:
    entry = entry.strip().strip('"')
    if entry.startswith("["):  # [v6]:port
        return entry[1:].partition("]")[0]
    if entry.count(":") == 1:  # v4:port
        return entry.partition(":")[0]
    return entry


def _hops(header: str, value: str) -> list[str]:
    """Forwarded-for addresses, oldest first, from the one header the proxy writes."""
    if header == "forwarded":
        return [_strip_port(match) for match in _FORWARDED_FOR.findall(value)]
    return [_strip_port(part) for part in value.split(",") if part.strip()]


def client_address(peer: str, header: str, value: str, trusted: list[Network]) -> str:
    """`value`: the proxy's header (`header`, "x-forwarded-for" or "forwarded"), repeated lines joined."""
    if not trusted or not _is_trusted(peer, trusted):
        return peer
    hops = _hops(header, value)
    for hop in reversed(hops):
        if not _is_trusted(hop, trusted):
            return hop if _valid(hop) else peer
    return hops[0] if hops and _valid(hops[0]) else peer


def _valid(address: str) -> bool:
    try:
        ipaddress.ip_address(address)
    except ValueError:
        return False
    return True
