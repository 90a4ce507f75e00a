"""Redis going away and coming back: the service fails closed and recovers by itself."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import anyio
import pytest
import requests

from app.store import StoreUnavailable
from app.store.redis import RedisStore
from harness import LiveServer, RedisServer, assert_error, concurrency_env, subject_image

TINY = subject_image(48, 36)


def test_store_fails_fast_while_redis_is_down_and_recovers_without_a_new_client(
    start_redis: Callable[[], RedisServer],
) -> None:
    server = start_redis()

    async def scenario() -> None:
        store = RedisStore(server.url)
        account, key = await store.create_account(credits=3, plan="free")
        server.stop()
        for op in (store.account_by_key(key), store.reserve(account.id, 1, "req_down"), store.ping()):
            started = time.monotonic()
            with pytest.raises(StoreUnavailable):
                await op
            assert time.monotonic() - started < 2, "a request must not hang on a dead Redis"
        server.start()
        found = await store.account_by_key(key)
        assert found is not None and found.credits == 3
        reservation = await store.reserve(account.id, 1, "req_up")
        assert await store.commit(reservation) and (await store.get_account(account.id)).credits == 2  # type: ignore[union-attr]
        await store.close()

    anyio.run(scenario)


def test_redis_stopped_mid_load_fails_closed_then_recovers(
    start_server: Callable[..., LiveServer], start_redis: Callable[[], RedisServer]
) -> None:
    redis_server = start_redis()
    # Reservations stranded by the outage are refunded by the sweeper after 2 s.
    server = start_server(
        CUTOUT_REDIS_URL=redis_server.url, CUTOUT_RESERVATION_TTL_S="2", CUTOUT_QUEUE_SIZE="64", **concurrency_env(4)
    )
    key = server.create_key(1000, "--rate", "100000/minute")
    responses: list[tuple[float, requests.Response]] = []  # (when it was sent, its response)
    stop = threading.Event()

    def load() -> None:
        while not stop.is_set():
            sent = time.monotonic()
            responses.append((sent, server.remove(key, TINY, model="ghost")))

    clients = [threading.Thread(target=load) for _ in range(4)]
    for client in clients:
        client.start()
    try:
        time.sleep(1.5)
        redis_server.stop()
        down_at = time.monotonic()
        time.sleep(2)
        up_at = time.monotonic()  # before starting: redis answers before start() returns
        redis_server.start()
        deadline = up_at + 20
        while not any(t > up_at and r.status_code == 200 for t, r in responses) and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        stop.set()
        for client in clients:
            client.join()

    statuses = [r.status_code for _, r in responses]
    assert set(statuses) <= {200, 503}, sorted(set(statuses))
    for _, r in responses:
        if r.status_code == 503:
            # A job that reserved just before the outage can outlive the 2 s reservation TTL on a busy
            # box: the sweeper refunds it and the commit answers processing_timeout. Both are uncharged.
            body = r.json()["error"]
            assert_error(r, 503, body["code"] if body["code"] == "processing_timeout" else "service_unavailable")
            assert int(r.headers["Retry-After"]) >= 1
    # Sent while Redis was down (less the few ms in which redis-py's retries may reach it again).
    during = [r.status_code for t, r in responses if down_at < t < up_at - 0.3]
    assert during and set(during) == {503}, [
        (round(t - down_at, 2), r.status_code) for t, r in responses if r.status_code == 200 and t > down_at
    ]
    assert any(t > up_at and r.status_code == 200 for t, r in responses), "recovered without a restart"
    assert requests.get(server.url + "/ready", timeout=5).status_code == 200

    # Every 200 was charged, and nothing else was: stranded reservations come back via the sweeper.
    charged = statuses.count(200)
    assert all(r.headers["X-Credits-Charged"] == "1" for _, r in responses if r.status_code == 200)
    deadline = time.monotonic() + 15
    while server.balance(key) != 1000 - charged and time.monotonic() < deadline:
        time.sleep(0.3)
    assert server.balance(key) == 1000 - charged
