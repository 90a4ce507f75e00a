"""Per-request ledger cost: key lookup + reserve + commit, embedded SQLite vs Redis.

Starts its own redis-server (127.0.0.1, temporary folder, AOF fsync always as in the tests).
    .venv/bin/python bench/ledger.py [N]
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

import anyio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from cpu import describe  # noqa: E402  (bench/cpu.py: the CPU line every bench prints)

from app.store import Store  # noqa: E402
from app.store.redis import RedisStore  # noqa: E402
from app.store.sqlite import SqliteStore  # noqa: E402
from tests.harness import RedisServer  # noqa: E402  (the tests' redis-server harness)


async def one_request_ms(store: Store, n: int) -> list[float]:
    account, key = await store.create_account(credits=n, plan="free")
    times = []
    for i in range(n):
        started = time.perf_counter()
        await store.account_by_key(key)
        await store.commit(await store.reserve(account.id, 1, f"req_bench_{i}"))
        times.append((time.perf_counter() - started) * 1000)
    await store.close()
    return times


def main() -> None:
    print(describe())
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 500
    with tempfile.TemporaryDirectory() as tmp:
        redis_server = RedisServer(Path(tmp) / "redis").start()
        try:
            results = {}
            stores: tuple[tuple[str, Store], ...] = (
                ("sqlite", SqliteStore(Path(tmp) / "s.sqlite3")),
                ("redis", RedisStore(redis_server.url)),
            )
            for name, store in stores:
                results[name] = anyio.run(one_request_ms, store, n)
        finally:
            redis_server.stop()
    for name, times in results.items():
        p95 = sorted(times)[int(n * 0.95)]
        print(f"{name:6} lookup+reserve+commit: median {statistics.median(times):.2f} ms, p95 {p95:.2f} ms")
    print(f"redis/sqlite median ratio {statistics.median(results['redis']) / statistics.median(results['sqlite']):.2f}")


if __name__ == "__main__":
    main()
