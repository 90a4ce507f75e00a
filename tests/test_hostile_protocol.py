"""Hostile clients, round three: the HTTP layer's lows (issue 21), through a real uvicorn.

Deeply nested JSON is a 400; a client's protocol error leaves no traceback in the log; a head over
the limit is refused however it arrives; the trailing-slash redirect is relative; JSON bodies wait
for the account's slot like multipart ones.
"""

from __future__ import annotations

import base64
import concurrent.futures
import json
import socket
import time
from collections.abc import Callable

import pytest
import requests
from test_hostile_clients import settle

from harness import LiveServer, assert_error, proc_status_mb, reset_peak_rss


@pytest.fixture(scope="module")
def server(start_server: Callable[..., LiveServer]) -> LiveServer:
    return start_server()


def exchange(server: LiveServer, *parts: bytes, pause_s: float = 0.3) -> bytes:
    """Send raw bytes in parts (pausing between them) and read until the server closes or goes quiet."""
    # Generous: a loaded machine may take seconds to answer; the server closes idle connections after 5 s.
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
        for part in parts:
            try:
                sock.sendall(part)
            except OSError:
                break
            time.sleep(pause_s)
        received = b""
        try:
            while data := sock.recv(65536):
                received += data
        except OSError:
            pass
    return received


def status_and_json(raw: bytes) -> tuple[int, dict]:
    head, _, body = raw.partition(b"\r\n\r\n")
    if b"transfer-encoding: chunked" in head.lower():
        size, _, rest = body.partition(b"\r\n")
        body = rest[: int(size, 16)]
    return int(head.split(b" ")[1]), json.loads(body)


def error_lines(server: LiveServer, since: int) -> list[str]:
    lines = server.log().splitlines()[since:]
    return [line for line in lines if "Traceback" in line or '"level": "ERROR"' in line or "ERROR" in line]


def test_deeply_nested_json_is_a_400(server: LiveServer) -> None:
    key = server.create_key(5)
    since = len(server.log().splitlines())
    response = requests.post(
        server.url + "/v2/rembg/",
        data=b"[" * 100_000,
        headers={"ApiKey": key, "Content-Type": "application/json"},
        timeout=30,
    )
    assert_error(response, 400, "invalid_parameter")
    assert "nested" in response.json()["error"]["message"]
    assert error_lines(server, since) == []


@pytest.mark.parametrize("key_kind", ["valid", "unknown"])
@pytest.mark.parametrize("content_type", ["multipart/form-data; boundary=b", "application/json", "text/plain"])
def test_a_malformed_chunked_body_logs_no_traceback(server: LiveServer, key_kind: str, content_type: str) -> None:
    """Some requests are answered before their body is read (a bad key, a wrong Content-Type); the broken
    chunk then arrives after the answer. Either way: an answer in our shape or a closed connection, and
    no ERROR line in the log."""
    key = server.create_key(5) if key_kind == "valid" else "co_unknown"
    since = len(server.log().splitlines())
    head = (
        f"POST /v2/rembg/ HTTP/1.1\r\nHost: x\r\nApiKey: {key}\r\nContent-Type: {content_type}\r\n"
        "Transfer-Encoding: chunked\r\n\r\n"
    ).encode()
    raw = exchange(server, head, b"5\r\n--b\r\n\r\n", b"zz\r\nnot a chunk\r\n")
    status, body = status_and_json(raw)
    assert 400 <= status < 500 and "error" in body, raw[:300]
    time.sleep(0.3)
    assert error_lines(server, since) == []


def test_a_head_over_the_limit_is_refused_also_in_one_send(server: LiveServer) -> None:
    for pad in (20_000, 120_000):
        head = f"GET /health HTTP/1.1\r\nHost: x\r\nX-Pad: {'a' * pad}\r\n\r\n".encode()
        status, body = status_and_json(exchange(server, head))  # one sendall: one read on loopback
        assert status == 431 and body["error"]["code"] == "request_head_too_large", (pad, status, body)
    # A head just under the limit, with a body in the same send, is served.
    body = json.dumps({"image_url": "ftp://example.com/x.jpg"}).encode()
    head = (
        f"POST /v2/rembg/ HTTP/1.1\r\nHost: x\r\nApiKey: {server.create_key(5)}\r\nContent-Type: application/json\r\n"
        f"X-Pad: {'a' * 15_000}\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode()
    status, answer = status_and_json(exchange(server, head + body))
    assert status == 400 and answer["error"]["code"] == "image_url_forbidden"


def test_the_trailing_slash_redirect_is_relative(server: LiveServer) -> None:
    response = requests.get(
        server.url + "/metrics/", headers={"Host": "evil.example"}, allow_redirects=False, timeout=10
    )
    assert response.status_code == 307
    assert response.headers["location"] == "/metrics"
    response = requests.get(
        server.url + "/health/?x=1", headers={"Host": "evil.example"}, allow_redirects=False, timeout=10
    )
    assert response.status_code == 307
    assert response.headers["location"] == "/health?x=1"
    unknown = requests.get(server.url + "//evil.example/", allow_redirects=False, timeout=10)
    assert unknown.status_code == 404


def test_json_bodies_wait_for_the_accounts_slot(server: LiveServer) -> None:
    """A free account (one request at a time, 16 waiting) sending twelve 20 MB JSON bodies at once: each
    waits for the account's turn before its body is read, so the server holds one or two bodies, not
    twelve (+1 GB before issue 21), and every one is answered in turn."""
    key = server.create_key(50, "--rate", "1000/minute")
    payload = json.dumps(
        {"image_data_uri": "data:image/jpeg;base64," + base64.b64encode(b"\xff\xd8" + b"\0" * 15_000_000).decode()}
    ).encode()
    pid = server.process.pid

    def send(_: int) -> requests.Response:
        return requests.post(
            server.url + "/v2/rembg/",
            data=payload,
            headers={"ApiKey": key, "Content-Type": "application/json"},
            timeout=120,
        )

    settle(server)
    rest = proc_status_mb(pid, "VmRSS")
    reset_peak_rss(pid)
    with concurrent.futures.ThreadPoolExecutor(12) as pool:
        responses = list(pool.map(send, range(12)))
    growth = proc_status_mb(pid, "VmHWM") - rest
    codes = sorted(response.json()["error"]["code"] for response in responses)
    print(
        f"12 x {len(payload) / 1e6:.0f} MB JSON bodies at once from one free account: {codes.count('invalid_image')} "
        f"answered in turn, peak +{growth:.0f} MB"
    )
    assert codes == ["invalid_image"] * 12
    assert growth < 200
    assert server.balance(key) == 50
