"""Hostile clients, round two: what one client can do to the others, through a real uvicorn.

Crafted headers cannot stall the event loop. (Numbers measured when this was written are in
docs/hostile.md.)
"""

from __future__ import annotations

import concurrent.futures
import struct
import threading
import time
import zlib

import requests
import urllib3

from conftest import LiveServer, assert_error

CRAFTED_BYTES = 24 * 1024 * 1024  # under the 25 MB body limit: the probe, not the limit, must refuse it
HEALTH_BUDGET_S = 0.1
REFUSAL_BUDGET_S = 1.5  # "about a second", upload over loopback included


def _chunk(kind: bytes, data: bytes = b"") -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def jpeg_of_fill_bytes() -> bytes:
    return b"\xff\xd8" + b"\xff" * CRAFTED_BYTES


def png_of_empty_chunks(after_pixels: bool) -> bytes:
    ihdr = _chunk(b"IHDR", struct.pack(">IIBBBBB", 16, 16, 8, 2, 0, 0, 0))
    idat = _chunk(b"IDAT", zlib.compress(b"".join(b"\x00" + b"\x80" * 48 for _ in range(16))))
    empties = _chunk(b"prVt") * (CRAFTED_BYTES // 12)
    body = [idat, empties] if after_pixels else [empties, idat]
    return b"".join([b"\x89PNG\r\n\x1a\n", ihdr, *body, _chunk(b"IEND")])


def gif_of_empty_comments() -> bytes:
    head = b"GIF89a" + struct.pack("<HHBBB", 16, 16, 0x80, 0, 0) + b"\x00\x00\x00\xff\xff\xff"
    frame = b"\x2c" + struct.pack("<HHHHB", 0, 0, 16, 16, 0) + b"\x02\x02\x44\x01\x00"
    return head + b"\x21\xfe\x00" * (CRAFTED_BYTES // 3) + frame + b"\x3b"


def encode_form(image: bytes) -> tuple[bytes, str]:
    return urllib3.encode_multipart_formdata({"image": ("upload", image, "application/octet-stream")})


class HealthProbe:
    """Polls /health on its own keep-alive connection and keeps every latency."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.latencies: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with requests.Session() as session:
            while not self._stop.is_set():
                started = time.perf_counter()
                assert session.get(self.url + "/health", timeout=30).status_code == 200
                self.latencies.append(time.perf_counter() - started)
                time.sleep(0.02)

    def __enter__(self) -> "HealthProbe":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=60)


def test_crafted_headers_are_refused_fast_and_never_stall_the_loop(live_server: LiveServer) -> None:
    key = live_server.create_key(5)
    crafted = {
        "jpeg-fill": jpeg_of_fill_bytes(),
        "png-chunks-before-pixels": png_of_empty_chunks(after_pixels=False),
        "png-chunks-after-pixels": png_of_empty_chunks(after_pixels=True),
        "gif-comments": gif_of_empty_comments(),
    }

    # Encoded up front: building 24 MB forms in this process while it times /health would skew the times.
    bodies = {name: encode_form(data) for name, data in crafted.items()}

    def send(name: str) -> tuple[str, float, requests.Response]:
        body, content_type = bodies[name]
        started = time.perf_counter()
        response = requests.post(
            live_server.url + "/v2/rembg/", data=body, headers={"ApiKey": key, "Content-Type": content_type}, timeout=60
        )
        return name, time.perf_counter() - started, response

    with HealthProbe(live_server.url) as health, concurrent.futures.ThreadPoolExecutor(len(crafted)) as pool:
        time.sleep(0.2)  # a few answers before the uploads start
        results = list(pool.map(send, crafted))
    worst = max(health.latencies)
    print(f"/health: {len(health.latencies)} answers, worst {worst * 1000:.0f} ms;",
          ", ".join(f"{name} {seconds:.2f} s" for name, seconds, _ in results))
    for name, seconds, response in results:
        assert_error(response, 400, "invalid_image")
        assert seconds < REFUSAL_BUDGET_S, (name, seconds)
    assert worst < HEALTH_BUDGET_S
    assert live_server.balance(key) == 5
