"""Hostile clients, round three: an `image_url` upstream that makes the fetcher parse for free (issue 21).

A hostile upstream on loopback (allowlisted) answers with framing that never reaches the size limit:
1-byte chunks, a flood of `100 Continue`, 16 KB chunk extensions, a head of 100 KB. Each fetch is
refused for at most a CPU second of the server's, /health keeps answering within 100 ms while three
run at once, and a client that hangs up stops its fetch and frees its account's slot.
"""

from __future__ import annotations

import concurrent.futures
import socket
import socketserver
import threading
import time
from collections.abc import Callable, Iterator

import pytest
import requests
from test_hostile_clients import HealthProbe, settle

from harness import LiveServer, assert_error, cpu_seconds, subject_image

CPU_BUDGET_S = 1.0
HEALTH_BUDGET_S = 0.1
HOSTILE_FOR_S = 20.0  # how long the upstream keeps sending, at most

ONE_BYTE_CHUNKS = b"1\r\nX\r\n" * 10000
EXTENDED_CHUNKS = (b"1;" + b"e" * 16000 + b"\r\nX\r\n") * 4
CONTINUES = b"HTTP/1.1 100 Continue\r\n\r\n" * 2000
CHUNKED_HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: image/jpeg\r\nTransfer-Encoding: chunked\r\n\r\n"
PHOTO = subject_image(2000, 1500, quality=95)
# An honest server's small chunks (256 bytes: smaller than any web server's buffer) with an extension.
HONEST_CHUNKS = (
    b"".join(
        b"%x;name=value\r\n%s\r\n" % (len(PHOTO[at : at + 256]), PHOTO[at : at + 256])
        for at in range(0, len(PHOTO), 256)
    )
    + b"0\r\n\r\n"
)


class Hostile(socketserver.BaseRequestHandler):
    """Reads the request head, then writes what the path asks for, as fast as it can, until the
    fetcher hangs up or HOSTILE_FOR_S pass. Records when each connection ended."""

    closed: dict[str, float] = {}

    def handle(self) -> None:
        request = b""
        while b"\r\n\r\n" not in request:
            data = self.request.recv(4096)
            if not data:
                return
            request += data
        path = request.split(b" ")[1].decode()
        head, repeat = {
            "/one-byte-chunks": (CHUNKED_HEAD, ONE_BYTE_CHUNKS),
            "/chunk-extensions": (CHUNKED_HEAD, EXTENDED_CHUNKS),
            "/continue-flood": (b"", CONTINUES),
            "/drip": (CHUNKED_HEAD, b"1\r\nX\r\n"),
            "/honest-chunks": (CHUNKED_HEAD, b""),
            "/huge-head": (b"HTTP/1.1 200 OK\r\nX-Pad: " + b"p" * 100_000 + b"\r\nContent-Length: 1\r\n\r\nX", b""),
        }[path]
        ended = time.monotonic() + HOSTILE_FOR_S
        try:
            self.request.sendall(head)
            if path == "/honest-chunks":
                for at in range(0, len(HONEST_CHUNKS), 1448):  # in TCP segments, as they arrive
                    self.request.sendall(HONEST_CHUNKS[at : at + 1448])
            while repeat and time.monotonic() < ended:
                self.request.sendall(repeat)
                if path == "/drip":
                    time.sleep(0.05)
        except OSError:
            pass  # the fetcher hung up
        Hostile.closed[path] = time.monotonic()


@pytest.fixture(scope="module")
def upstream() -> Iterator[str]:
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Hostile)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def server(start_server: Callable[..., LiveServer]) -> LiveServer:
    return start_server(CUTOUT_FETCH_ALLOW='["127.0.0.1/32"]')


def fetch(server: LiveServer, key: str, url: str) -> requests.Response:
    return requests.post(
        server.url + "/v2/rembg/", headers={"ApiKey": key}, json={"image_url": url, "model": "ghost"}, timeout=60
    )


@pytest.mark.parametrize("path", ["/one-byte-chunks", "/chunk-extensions", "/continue-flood", "/huge-head"])
def test_a_hostile_upstream_costs_at_most_a_cpu_second(server: LiveServer, upstream: str, path: str) -> None:
    key = server.create_key(5, "--rate", "1000/minute")
    pid = server.process.pid
    settle(server)
    started, wall = cpu_seconds(pid), time.perf_counter()
    response = fetch(server, key, upstream + path)
    settle(server)
    spent, wall = cpu_seconds(pid) - started, time.perf_counter() - wall
    print(f"{path}: {response.status_code} {response.json()['error']['code']} in {wall:.2f} s, {spent:.2f} CPU s")
    assert_error(response, 400, "image_url_unreachable")
    assert spent <= CPU_BUDGET_S
    assert server.balance(key) == 5


def test_an_honest_upstream_in_small_chunks_is_fetched(server: LiveServer, upstream: str) -> None:
    key = server.create_key(5, "--rate", "1000/minute")
    response = fetch(server, key, upstream + "/honest-chunks")
    assert response.status_code == 200, response.text[:300]
    assert response.headers["content-type"] == "image/png"


def test_three_hostile_fetches_at_once_leave_health_under_100_ms(server: LiveServer, upstream: str) -> None:
    keys = [server.create_key(5, "--rate", "1000/minute") for _ in range(3)]
    paths = ["/one-byte-chunks", "/chunk-extensions", "/continue-flood"]
    pid = server.process.pid
    settle(server)
    started = cpu_seconds(pid)
    with HealthProbe(server.url) as health, concurrent.futures.ThreadPoolExecutor(3) as pool:
        time.sleep(0.2)
        results = list(
            pool.map(lambda pair: fetch(server, *pair), zip(keys, [upstream + p for p in paths], strict=True))
        )
        time.sleep(0.3)
    settle(server)
    spent = cpu_seconds(pid) - started
    latencies = sorted(health.latencies)
    print(
        f"3 hostile fetches at once: {spent:.2f} CPU s in all; /health {len(latencies)} answers, "
        f"p50 {latencies[len(latencies) // 2] * 1000:.0f} ms, worst {latencies[-1] * 1000:.0f} ms"
    )
    for response in results:
        assert_error(response, 400, "image_url_unreachable")
    assert spent <= 3 * CPU_BUDGET_S
    assert latencies[-1] < HEALTH_BUDGET_S


def test_a_client_that_hangs_up_stops_its_fetch_and_frees_its_slot(server: LiveServer, upstream: str) -> None:
    key = server.create_key(5, "--rate", "1000/minute")  # free plan: one request at a time
    body = b'{"image_url": "' + (upstream + "/drip").encode() + b'", "model": "ghost"}'
    head = (
        f"POST /v2/rembg/ HTTP/1.1\r\nHost: 127.0.0.1\r\nApiKey: {key}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode()
    Hostile.closed.pop("/drip", None)
    with socket.create_connection(("127.0.0.1", server.port)) as client:
        client.sendall(head + body)
        time.sleep(1.0)  # the fetch is dripping in
        assert "/drip" not in Hostile.closed
        hung_up = time.monotonic()
    deadline = time.monotonic() + 10
    while "/drip" not in Hostile.closed and time.monotonic() < deadline:
        time.sleep(0.05)
    assert "/drip" in Hostile.closed, "the fetch went on after the client left"
    stopped_after = Hostile.closed["/drip"] - hung_up
    print(f"fetch stopped {stopped_after * 1000:.0f} ms after the client hung up")
    assert stopped_after < 2.0
    # The slot is free again: the same free account is not refused as busy.
    response = fetch(server, key, upstream + "/huge-head")
    assert_error(response, 400, "image_url_unreachable")
    assert server.balance(key) == 5
