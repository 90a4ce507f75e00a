"""Requests queue per API key (app/accounts/admission.py): a key's requests past its plan's running limit
wait their turn in the key's own bounded line; only what overflows it gets 429.

The line itself is checked on the real class in an event loop; the promises a client sees (a
burst all served, a neighbour not delayed by another key's backlog, a concurrent retry answered
409) through a real uvicorn, with times compared against a job's time measured in the same test.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import time
import tomllib
from collections.abc import Callable

import pytest
import requests
from test_hostile_clients import jobs_in_flight

from app.accounts.admission import AccountSlots
from app.errors import ApiError
from app.settings import Settings
from app.store import Account
from harness import ROOT, LiveServer, assert_error, subject_image, wait_until

SHIPPED_PLANS = tomllib.loads((ROOT / "config" / "plans.toml").read_text())


def plans_env(**limits: int) -> dict[str, str]:
    """Every shipped plan with these limits (max_concurrent, max_queued) instead of its own."""
    plans = {name: {**plan, **limits} for name, plan in SHIPPED_PLANS["plans"].items()}
    return {"CUTOUT_PLANS": json.dumps(plans)}


# --- the line, on the real class --------------------------------------------------------------------


def slots(max_concurrent: int = 1, max_queued: int = 2) -> tuple[AccountSlots, Account]:
    settings = Settings(
        plans={"free": {"rate_limit": "60/minute", "max_concurrent": max_concurrent, "max_queued": max_queued}}
    )
    account = Account(id="acc", plan="free", credits=10, rate_limit=None, revoked=False, created_at=0.0)
    return AccountSlots(settings), account


def test_waiters_take_their_turn_in_order_and_overflow_is_refused() -> None:
    async def scenario() -> None:
        line, account = slots(max_concurrent=1, max_queued=2)
        order: list[int] = []
        release = asyncio.Event()

        async def request(n: int) -> None:
            with line.admit(account):
                async with line.hold(account):
                    order.append(n)
                    if n == 0:
                        await release.wait()

        tasks = [asyncio.create_task(request(n)) for n in range(3)]
        await asyncio.sleep(0.01)
        assert order == [0], "one runs, two wait"
        with pytest.raises(ApiError) as refused, line.admit(account):
            pass
        assert refused.value.code == "concurrency_limit_exceeded"
        release.set()
        await asyncio.gather(*tasks)
        assert order == [0, 1, 2], "first come, first served"
        assert not line._lines, "an idle account leaves nothing behind"

    asyncio.run(scenario())


def test_a_waiter_that_leaves_or_times_out_gives_its_place_up() -> None:
    async def scenario() -> None:
        line, account = slots(max_concurrent=1, max_queued=3)
        release = asyncio.Event()
        ran: list[str] = []

        async def request(name: str, timeout: float | None = None) -> None:
            with line.admit(account):
                async with line.hold(account, timeout):
                    ran.append(name)
                    if name == "first":
                        await release.wait()

        first = asyncio.create_task(request("first"))
        await asyncio.sleep(0.01)
        leaver = asyncio.create_task(request("leaver"))
        impatient = asyncio.create_task(request("impatient", timeout=0.05))
        last = asyncio.create_task(request("last"))
        await asyncio.sleep(0.01)
        leaver.cancel()  # its client hung up
        with pytest.raises(TimeoutError):
            await impatient
        release.set()
        await asyncio.gather(first, last)
        assert leaver.cancelled()
        assert ran == ["first", "last"]
        assert not line._lines

    asyncio.run(scenario())


# --- through a real uvicorn -----------------------------------------------------------------------


def timed_remove(
    server: LiveServer, key: str, image: bytes, **kwargs: object
) -> tuple[requests.Response, float, float]:
    """The response, when it was sent and when it was answered (perf_counter)."""
    sent = time.perf_counter()
    response = server.remove(key, image, "ghost", **kwargs)  # type: ignore[arg-type]
    return response, sent, time.perf_counter()


def test_a_burst_of_8_from_one_key_on_the_default_plan_all_succeed(live_server: LiveServer) -> None:
    """The shipped default plan (free: one at once) with its default line: nothing to retry."""
    assert SHIPPED_PLANS["plans"][SHIPPED_PLANS["default_plan"]]["max_concurrent"] == 1
    key = live_server.create_key(100)
    image = subject_image(640, 480)
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        responses = list(pool.map(lambda _: live_server.remove(key, image, "ghost"), range(8)))
    assert [r.status_code for r in responses] == [200] * 8, [r.text[:200] for r in responses]
    charged = sum(int(r.headers["X-Credits-Charged"]) for r in responses)
    assert live_server.balance(key) == 100 - charged


def test_one_keys_burst_delays_another_keys_request_by_at_most_one_job(start_server: Callable[..., LiveServer]) -> None:
    """One worker, so any unfairness would show: while key A has 8 requests in, key B's one request
    waits for at most the job of A's that is running, not for A's backlog."""
    server = start_server(CUTOUT_WORKERS="1")
    try:
        _burst_beside_one_request(server)
    finally:
        server.stop()  # a server of its own: its memory back at once, not at the session's end


def _burst_beside_one_request(server: LiveServer) -> None:
    greedy, other = server.create_key(100), server.create_key(100)
    image = subject_image(1600, 1200)
    solo = []
    for _ in range(3):  # one job's time, alone, measured here and now (the machine may be loaded)
        response, sent, done = timed_remove(server, other, image)
        assert response.status_code == 200
        solo.append(done - sent)
    job_s = sorted(solo)[1]
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        burst = [pool.submit(timed_remove, server, greedy, image) for _ in range(8)]
        wait_until(lambda: jobs_in_flight(server) >= 1, what="the burst's first job running")
        response, sent, done = timed_remove(server, other, image)
        finished = [future.result() for future in burst]
    assert response.status_code == 200 and all(r.status_code == 200 for r, _, _ in finished)
    waited = done - sent
    ahead = sum(1 for _, _, burst_done in finished if burst_done < done)
    last = max(burst_done for _, _, burst_done in finished)
    print(
        f"job {job_s:.2f} s alone; B answered in {waited:.2f} s with {ahead} of A's 8 done before it; "
        f"A's burst took {last - sent:.2f} s more"
    )
    # FIFO across keys in the worker gate: A's running job, then B's; A's next waits in A's line.
    assert ahead <= 2, f"{ahead} of A's jobs were served before B's one"
    # Generous (A's uploads and B's share two loaded cores), yet far below A's backlog of 7 more jobs.
    assert waited < 4 * job_s + 1.0, "B waited about one job (A's running one) plus its own"
    assert last > done, "A's backlog was still being worked through when B was answered"


def test_past_the_line_a_429_with_retry_after(start_server: Callable[..., LiveServer]) -> None:
    server = start_server(CUTOUT_WORKERS="1", **plans_env(max_concurrent=1, max_queued=2))
    try:
        _overflow(server)
    finally:
        server.stop()


def _overflow(server: LiveServer) -> None:
    key = server.create_key(100)
    image = subject_image(1600, 1200)
    with concurrent.futures.ThreadPoolExecutor(10) as pool:
        responses = list(pool.map(lambda _: server.remove(key, image, "ghost"), range(10)))
    served = [r for r in responses if r.status_code == 200]
    refused = [r for r in responses if r.status_code != 200]
    assert len(served) >= 3, "one running and two waiting are served"
    assert refused, "ten at once overflow a line of three"
    for response in refused:
        body = assert_error(response, 429, "concurrency_limit_exceeded")
        assert response.headers["Retry-After"] == str(body["retry_after"]) == "1"
        assert "2 waiting" in body["error"]["message"]
    charged = sum(int(r.headers["X-Credits-Charged"]) for r in served)
    assert server.balance(key) == 100 - charged, "refusals are not charged"


def test_a_concurrent_retry_with_the_same_idempotency_key_gets_409(live_server: LiveServer) -> None:
    key = live_server.create_key(100)
    image = subject_image(2400, 1800)
    headers = {"Idempotency-Key": "order-1234"}
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        first = pool.submit(live_server.remove, key, image, "ghost", headers=headers)
        wait_until(lambda: jobs_in_flight(live_server) >= 1 or first.done(), what="the first request running")
        assert not first.done(), "the job outlived the wait (make the image bigger)"
        retry = live_server.remove(key, image, "ghost", headers=headers)
        assert first.result().status_code == 200
    body = assert_error(retry, 409, "idempotency_key_in_use")
    assert "Retry-After" in retry.headers, body
    replay = live_server.remove(key, image, "ghost", headers=headers)
    assert replay.status_code == 200 and replay.headers["Idempotent-Replayed"] == "true"
    assert live_server.balance(key) == 100 - int(first.result().headers["X-Credits-Charged"])
