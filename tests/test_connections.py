"""Connections a hostile client holds, and whose address counts: through a real uvicorn, raw sockets.

Request heads are bounded in size and count (431 in our shape); connections that send no
complete head, or sit idle after a response, are closed; open connections are capped. Client
addresses come from forwarding headers only when the peer is a trusted proxy, and the
wrong-key limit never refuses a valid key.
"""

from __future__ import annotations

import contextlib
import json
import socket
import time
from collections.abc import Callable

import pytest
import requests

from harness import LiveServer, assert_error, subject_image

HEAD_TIMEOUT_S = 1.0
KEEP_ALIVE_S = 1.0
MAX_CONNECTIONS = 20


@pytest.fixture(scope="module")
def guarded(start_server: Callable[..., LiveServer]) -> LiveServer:
    return start_server(
        CUTOUT_HEAD_TIMEOUT_S=str(HEAD_TIMEOUT_S),
        CUTOUT_KEEP_ALIVE_TIMEOUT_S=str(KEEP_ALIVE_S),
        CUTOUT_MAX_CONNECTIONS=str(MAX_CONNECTIONS),
        CUTOUT_AUTH_FAILURE_LIMIT="3/minute",
        CUTOUT_TRUSTED_PROXIES='["127.0.0.1"]',
    )


def connect(server: LiveServer) -> socket.socket:
    return socket.create_connection(("127.0.0.1", server.port), timeout=10)


def answer(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """Read one whole response (the server closes after these), then check that it closed."""
    received = b""
    while chunk := sock.recv(65536):
        received += chunk
    head, _, body = received.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {name.lower(): value.strip() for name, _, value in (line.partition(":") for line in lines[1:])}
    return int(lines[0].split()[1]), headers, body


def closed_within(sock: socket.socket, seconds: float) -> float | None:
    """Seconds until the server closed the connection (reading nothing), or None if it did not."""
    started = time.monotonic()
    sock.settimeout(seconds)
    try:
        while sock.recv(4096):
            pass
    except TimeoutError:
        return None
    except ConnectionResetError:
        pass
    return time.monotonic() - started


def check_431(status: int, headers: dict[str, str], body: bytes) -> None:
    assert status == 431, (status, body[:200])
    error = json.loads(body)["error"]
    assert error["code"] == "request_head_too_large" and error["request_id"].startswith("req_")
    assert headers["content-type"].startswith("application/json")


def test_oversized_heads_get_431_in_our_shape(guarded: LiveServer) -> None:
    one_huge = "GET /health HTTP/1.1\r\nHost: x\r\nX-Big: " + "a" * 50_000_000 + "\r\n\r\n"
    many = "GET /health HTTP/1.1\r\nHost: x\r\n" + "a: b\r\n" * 1_000_000 + "\r\n"
    for head in (one_huge, many):
        with connect(guarded) as sock:
            with contextlib.suppress(OSError):  # answered and closed while we were still sending
                sock.sendall(head.encode())
            check_431(*answer(sock))
    # Under the size limit but over max_headers (100): refused by count.
    with connect(guarded) as sock:
        sock.sendall(
            ("GET /health HTTP/1.1\r\nHost: x\r\n" + "".join(f"h{i}: v\r\n" for i in range(150)) + "\r\n").encode()
        )
        check_431(*answer(sock))
    assert requests.get(guarded.url + "/health", timeout=5).status_code == 200


def test_slow_absent_and_idle_heads_are_closed(guarded: LiveServer) -> None:
    silent, slow, idle = connect(guarded), connect(guarded), connect(guarded)
    slow.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n")  # and never the blank line
    idle.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")  # answered, then kept alive, idle
    for sock in (silent, slow, idle):
        with sock:
            seconds = closed_within(sock, HEAD_TIMEOUT_S + KEEP_ALIVE_S + 3)
            assert seconds is not None, "the server kept the connection open"
    # A head trickled a byte at a time is closed at the deadline too, though it never pauses long.
    with connect(guarded) as trickle:
        started = time.monotonic()
        closed_after = None
        for byte in b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 1000:
            try:
                trickle.sendall(bytes([byte]))
                time.sleep(0.05)
                if trickle.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b"":
                    closed_after = time.monotonic() - started
                    break
            except BlockingIOError:
                continue  # nothing to read: still open
            except OSError:
                closed_after = time.monotonic() - started
                break
        assert closed_after is not None and closed_after < HEAD_TIMEOUT_S + 2, closed_after


def test_open_connections_are_capped(guarded: LiveServer) -> None:
    held = [connect(guarded) for _ in range(MAX_CONNECTIONS + 5)]
    try:
        time.sleep(0.3)
        closed = [sock for sock in held if closed_within(sock, 0.2) is not None]
        assert len(closed) >= 5, "connections past the cap are closed at once"
    finally:
        for sock in held:
            sock.close()
    time.sleep(0.3)
    assert requests.get(guarded.url + "/health", timeout=5).status_code == 200


def wrong_key(server: LiveServer, headers: dict[str, str]) -> requests.Response:
    return server.remove("co_wrong-guess", subject_image(32, 24), headers=headers)


def test_forwarding_headers_count_only_from_a_trusted_proxy(
    guarded: LiveServer, start_server: Callable[..., LiveServer]
) -> None:
    # guarded trusts 127.0.0.1 (our test client plays the proxy): each forwarded client has its own count.
    for _ in range(3):
        assert_error(wrong_key(guarded, {"X-Forwarded-For": "198.51.100.7"}), 401, "invalid_api_key")
    assert_error(wrong_key(guarded, {"X-Forwarded-For": "198.51.100.7"}), 429, "rate_limit_exceeded")
    # Only the header the proxy writes (proxy_header: X-Forwarded-For by default) is read: a client's
    # own Forwarded, which such a proxy passes through, does not give it a fresh count.
    spoof = {"Forwarded": 'for="198.51.100.50:4711"', "X-Forwarded-For": "198.51.100.7"}
    assert_error(wrong_key(guarded, spoof), 429, "rate_limit_exceeded")
    # The client wrote its own X-Forwarded-For; the proxy appended the address it saw, which counts.
    assert_error(wrong_key(guarded, {"X-Forwarded-For": "198.51.100.9, 198.51.100.7"}), 429, "rate_limit_exceeded")
    assert_error(wrong_key(guarded, {"X-Forwarded-For": "198.51.100.8"}), 401, "invalid_api_key")
    key = guarded.create_key(5)
    assert guarded.remove(key, headers={"X-Forwarded-For": "198.51.100.7"}, model="ghost").status_code == 200, (
        "a valid key is served from an address that sent many wrong ones"
    )

    # By default no proxy is trusted: rotating X-Forwarded-For does not escape the limit, and
    # naming a victim's address does not lock the victim out.
    plain = start_server(CUTOUT_AUTH_FAILURE_LIMIT="3/minute")
    for i in range(3):
        assert_error(wrong_key(plain, {"X-Forwarded-For": f"203.0.113.{i}"}), 401, "invalid_api_key")
    assert_error(wrong_key(plain, {"X-Forwarded-For": "203.0.113.99"}), 429, "rate_limit_exceeded")
    victim = plain.create_key(5)
    assert plain.remove(victim, model="ghost").status_code == 200


def test_a_body_left_unread_after_an_early_answer_cannot_hold_the_connection(guarded: LiveServer) -> None:
    # A wrong key is answered 401 before the body is read; the client then trickles the body in.
    sock = connect(guarded)
    head = (
        "POST /v2/rembg/ HTTP/1.1\r\nHost: x\r\nApiKey: co_not-a-key\r\n"
        "Content-Type: multipart/form-data; boundary=b\r\nContent-Length: 1000000\r\n\r\n"
    )
    sock.sendall(head.encode())
    sock.settimeout(5)
    assert sock.recv(65536).startswith(b"HTTP/1.1 401"), "answered before the body"
    started = time.monotonic()
    try:
        while time.monotonic() - started < 8 * HEAD_TIMEOUT_S:
            sock.sendall(b"x")
            time.sleep(0.2)
        closed = False
    except (BrokenPipeError, ConnectionResetError):
        closed = True
    finally:
        sock.close()
    assert closed, "a trickled body nobody reads kept the connection open"
    assert time.monotonic() - started < 3 * HEAD_TIMEOUT_S + 1
