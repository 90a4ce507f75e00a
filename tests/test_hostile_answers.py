"""Hostile clients, round three: answers nobody reads and replays (issue 21), through a real uvicorn.

A client that stops reading its answer has its connection closed after `send_timeout_s`, and until
then the answer counts in the metrics; an idempotent replay is served from the stored answer, not
recomputed for free.
"""

from __future__ import annotations

import io
import re
import socket
import time
from collections.abc import Callable

import numpy as np
import pytest
import requests
from PIL import Image
from test_hostile_clients import settle

from harness import LiveServer, cpu_seconds, proc_status_mb, wait_until

SEND_TIMEOUT_S = 20


def noise_photo(width: int, height: int) -> bytes:
    """A photo whose cut-out PNG is large (noise does not compress): a big answer for little work."""
    rng = np.random.default_rng(0)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(buf, "JPEG", quality=95)
    return buf.getvalue()


@pytest.fixture(scope="module")
def server(start_server: Callable[..., LiveServer]) -> LiveServer:
    return start_server(CUTOUT_SEND_TIMEOUT_S=str(SEND_TIMEOUT_S))


def gauge(server: LiveServer, name: str) -> float:
    text = requests.get(server.url + "/metrics", timeout=10).text
    return float(re.search(rf"^{name} (\S+)$", text, re.M).group(1))


def unread_request(server: LiveServer, key: str, photo: bytes) -> socket.socket:
    """Send a whole request and never read the answer (a small receive buffer: the answer stays with us)."""
    prepared = requests.Request(
        "POST",
        server.url + "/v2/rembg/",
        headers={"ApiKey": key, "Accept": "image/png"},
        files={"image": ("p.jpg", photo, "image/jpeg")},
        data={"model": "ghost", "bg_color": "#3060a0"},
    ).prepare()
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", server.port))
    head = "POST /v2/rembg/ HTTP/1.1\r\nHost: 127.0.0.1\r\n" + "".join(
        f"{name}: {value}\r\n" for name, value in prepared.headers.items()
    )
    sock.sendall(head.encode() + b"\r\n" + prepared.body)  # type: ignore[operator]
    return sock


def test_answers_nobody_reads_are_counted_and_dropped_after_the_send_timeout(server: LiveServer) -> None:
    key = server.create_key(20, "--rate", "1000/minute")
    photo = noise_photo(3000, 2000)
    size = len(server.remove(key, photo, model="ghost", fields={"bg_color": "#3060a0"}).content)
    assert size > 4e6, size
    pid = server.process.pid
    settle(server)
    rest = proc_status_mb(pid, "VmRSS")
    sockets = []
    for _ in range(3):
        before = gauge(server, "cutout_unsent_answer_bytes")
        sockets.append(unread_request(server, key, photo))
        # Written, and not read: what the kernel's socket buffers do not hold stays in ours.
        wait_until(lambda b=before: gauge(server, "cutout_unsent_answer_bytes") > b + size / 4, 60, "an unread answer")
    unsent = gauge(server, "cutout_unsent_answer_bytes")
    held = proc_status_mb(pid, "VmRSS") - rest
    in_flight = gauge(server, "cutout_requests_in_flight")
    print(
        f"3 unread {size / 2**20:.1f} MiB answers: {unsent / 2**20:.1f} MiB unsent in the metrics, "
        f"{in_flight:.0f} in flight, RSS +{held:.0f} MB"
    )
    assert unsent > size and in_flight == 3
    started = time.monotonic()
    wait_until(lambda: gauge(server, "cutout_unsent_answer_bytes") == 0, 3 * SEND_TIMEOUT_S + 10, "the send timeout")
    dropped_after = time.monotonic() - started
    for sock in sockets:
        sock.settimeout(5)
        with pytest.raises(OSError):  # reset by the server: what had not reached our buffer is gone
            while sock.recv(1 << 20):
                pass
            raise ConnectionResetError("closed")  # an orderly close is a close too
        sock.close()
    released = proc_status_mb(pid, "VmRSS") - rest
    print(f"dropped {dropped_after:.1f} s later (send_timeout_s {SEND_TIMEOUT_S}); RSS +{released:.0f} MB after")
    assert gauge(server, "cutout_requests_in_flight") == 0
    assert released < held
    # A client that reads, however slowly at first, gets its whole answer.
    response = server.remove(key, photo, model="ghost", fields={"bg_color": "#3060a0"})
    assert response.status_code == 200 and len(response.content) == size
    assert cpu_seconds(pid) > 0


def test_unsent_answers_count_in_the_memory_admission() -> None:
    """MemoryBudget.outside (wired to the unsent answers' bytes in app/main.py): a job waits while
    another runs and unread answers fill the rest, and is admitted when they are dropped."""
    import asyncio

    from app.http.unsent import UnsentAnswers
    from app.inference.memory import MemoryBudget, MemoryBusy

    async def scenario() -> None:
        unsent = UnsentAnswers()
        budget = MemoryBudget(100, wait_s=0.2)
        budget.outside = lambda: unsent.bytes
        unsent.on_release = budget.wake
        running = await budget.acquire(40)
        unsent.change(50, 1)
        with pytest.raises(MemoryBusy):
            await budget.acquire(20)  # 40 + 50 + 20 > 100
        waiting = asyncio.ensure_future(budget.acquire(20))
        await asyncio.sleep(0.05)
        assert not waiting.done()
        unsent.change(-50, -1)  # the answers' connections were closed (send timeout)
        assert await waiting == 20
        budget.release(running)

    asyncio.run(scenario())


def test_replays_are_served_from_the_stored_answer(server: LiveServer) -> None:
    """Ten retries of a 4 MP request under one Idempotency-Key: the first answer's bytes, 0 credits, and
    next to no CPU (each recomputed the whole job for 0 credits before: 7.2 CPU s for ten)."""
    key = server.create_key(10, "--rate", "1000/minute")
    photo = noise_photo(2400, 1600)
    pid = server.process.pid
    headers = {"Idempotency-Key": "replay-me"}

    def send(extra: dict[str, str] | None = None) -> requests.Response:
        return server.remove(key, photo, model="ghost", headers={**headers, **(extra or {})})

    settle(server)
    started = cpu_seconds(pid)
    first = send()
    settle(server)
    once = cpu_seconds(pid) - started
    assert first.status_code == 200 and first.headers["X-Credits-Charged"] == "1"
    started = cpu_seconds(pid)
    replays = [send() for _ in range(10)]
    settle(server)
    replayed = cpu_seconds(pid) - started
    print(f"4 MP ghost: {once:.2f} CPU s; 10 replays {replayed:.2f} CPU s, {len(first.content) / 1e6:.1f} MB each")
    for response in replays:
        assert response.status_code == 200
        assert response.headers["Idempotent-Replayed"] == "true" and response.headers["X-Credits-Charged"] == "0"
        assert response.content == first.content
    assert server.balance(key) == 9
    assert replayed / 10 < 0.25 * once, "a replay costs its upload and checks, not the job"
    # A retry asking for the other shape (JSON) has no stored answer to be served: new work, charged.
    as_json = send({"Accept": "application/json"})
    assert as_json.status_code == 200 and as_json.headers["X-Credits-Charged"] == "1"
    assert "Idempotent-Replayed" not in as_json.headers
    assert server.balance(key) == 8
