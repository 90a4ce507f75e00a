"""Synchronous requests keep priority over asynchronous jobs: sync p50 alone vs while a 100-item batch runs.

One server (the tests' harness: real uvicorn, the lean config, ghost), default workers and one job
worker. Phases: sync requests alone; the same while a batch of 100 photos runs; sync alone again
(the baseline is the mean of the two alone phases, so drift on a shared machine shows). Each sync
request is followed by a short pause (a client's think time), which is when batch items get to run.
    .venv/bin/python bench/jobs_priority.py [N_SYNC] [BATCH_ITEMS] [THINK_S]
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

import requests

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from cpu import describe  # noqa: E402  (bench/cpu.py: the CPU line every bench prints)

from harness import LiveServer, subject_image  # noqa: E402  (the tests' server harness)

THINK_S = float(sys.argv[3]) if len(sys.argv) > 3 else 0.05
PHOTO = subject_image(640, 480)


def sync_latencies_ms(server: LiveServer, key: str, n: int) -> list[float]:
    times = []
    for _ in range(n):
        started = time.perf_counter()
        response = requests.post(
            server.url + "/v2/rembg/",
            headers={"ApiKey": key},
            files={"image": ("photo.jpg", PHOTO, "image/jpeg")},
            data={"model": "ghost"},
            timeout=600,
        )
        assert response.status_code == 200, response.text
        times.append((time.perf_counter() - started) * 1000)
        time.sleep(THINK_S)
    return times


def batch_status(server: LiveServer, key: str, location: str) -> dict:
    return requests.get(server.url + location, headers={"ApiKey": key}, timeout=600).json()


def main() -> None:
    print(describe())
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 40
    items = int(sys.argv[2]) if len(sys.argv) > 2 else 100
    with tempfile.TemporaryDirectory() as tmp:
        server = LiveServer(Path(tmp), {"CUTOUT_BATCH_MAX_ITEMS": str(items)}).start()
        try:
            key = server.create_key(10 * (3 * n + items), "--rate", "100000/minute")
            sync_latencies_ms(server, key, 5)  # warm-up
            alone = sync_latencies_ms(server, key, n)
            files = [("images", (f"{i}.jpg", PHOTO, "image/jpeg")) for i in range(items)]
            started = time.perf_counter()
            response = requests.post(
                server.url + "/v2/batches", headers={"ApiKey": key}, files=files, data={"model": "ghost"}, timeout=120
            )
            assert response.status_code == 202, response.text
            location = response.headers["location"]
            during = sync_latencies_ms(server, key, n)
            running = batch_status(server, key, location)
            assert running["status"] != "completed", "the batch ended before the measurement did: raise BATCH_ITEMS"
            done_during = running["counts"]["succeeded"]
            while batch_status(server, key, location)["status"] != "completed":
                time.sleep(0.2)
            batch_s = time.perf_counter() - started
            after = sync_latencies_ms(server, key, n)
        finally:
            server.stop()
    base = (statistics.median(alone) + statistics.median(after)) / 2
    with_batch = statistics.median(during)
    print(f"sync requests: {n} per phase, {THINK_S * 1000:.0f} ms think time; batch of {items} photos 640x480, ghost")
    print(
        f"sync p50 alone:        {statistics.median(alone):7.1f} ms (before), {statistics.median(after):7.1f} ms (after)"
    )
    print(f"sync p50 during batch: {with_batch:7.1f} ms  ({(with_batch / base - 1) * 100:+.1f} % over the mean alone)")
    print(f"batch items done while sync traffic ran: {done_during}/{items}; whole batch {batch_s:.1f} s")


if __name__ == "__main__":
    main()
