"""Asynchronous jobs when a replica dies mid-job (kill -9) and when Redis goes away: the job is run
again, once charged, by another replica or by the same one after its restart; the answers while
Redis is down are our 503; a queued job's position, exact on each engine. Real uvicorn servers, a
real redis-server, real SIGKILL.
"""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest
import requests
from jobs_harness import TINY, job_of, submit

from harness import LiveServer, RedisServer, assert_error, subject_image, wait_until

# Big enough that its decode, resizes and full-size PNG encode take a while: the kill lands mid-job.
BIG = subject_image(3000, 2250)
LEASE = {"CUTOUT_JOB_LEASE_S": "2"}


def _jobs(server: LiveServer, key: str, locations: list[str]) -> list[dict]:
    return [requests.get(server.url + loc, headers={"ApiKey": key}, timeout=10).json() for loc in locations]


@pytest.mark.parametrize("engine", ["sqlite", "redis"])
def test_a_job_left_by_a_killed_replica_runs_again_and_is_charged_once(
    engine: str, start_server: Callable[..., LiveServer], start_redis: Callable[[], RedisServer], tmp_path: Path
) -> None:
    env = dict(LEASE)
    if engine == "redis":
        redis_server = start_redis()
        env["CUTOUT_REDIS_URL"] = redis_server.url
    first = start_server(data_dir=tmp_path / "a", **env)
    key = first.create_key(10)
    locations = []
    for _ in range(3):
        response = first.remove(key, BIG, model="ghost", headers={"Prefer": "respond-async"})
        assert response.status_code == 202, response.text
        locations.append(response.headers["location"])
    wait_until(lambda: any(j["status"] == "running" for j in _jobs(first, key, locations)), 60, "a running job")
    assert first.process is not None
    first.process.kill()  # SIGKILL: no shutdown, no refund, the job's claim left behind
    first.process.wait()

    # The embedded engine: the same data dir, restarted. Redis: another replica on the same Redis.
    second = start_server(data_dir=tmp_path / ("a" if engine == "sqlite" else "b"), **env)
    wait_until(
        lambda: all(j["status"] == "succeeded" for j in _jobs(second, key, locations)), 120, "every job to succeed"
    )
    jobs = _jobs(second, key, locations)
    assert max(job["runs"] for job in jobs) >= 2, jobs  # one was picked up again
    assert second.balance(key) == 7  # three delivered, three charged: no more, no less
    if engine == "sqlite":
        with sqlite3.connect(tmp_path / "a" / "cutout.sqlite3") as db:
            charges = [r[0] for r in db.execute("SELECT ref FROM ledger WHERE reason = 'charge'").fetchall()]
    else:
        entries = redis_server.client().xrange("cutout:ledger")
        charges = [fields["ref"] for _, fields in entries if fields.get("reason") == "charge"]
    assert sorted(charges) == sorted(job["id"] for job in jobs)  # one ledger charge per job


def test_jobs_while_redis_is_down_fail_closed_and_resume(
    start_server: Callable[..., LiveServer], start_redis: Callable[[], RedisServer]
) -> None:
    redis_server = start_redis()
    server = start_server(CUTOUT_REDIS_URL=redis_server.url, CUTOUT_JOB_WORKERS="0", **LEASE)
    key = server.create_key(5)
    location = server.remove(key, subject_image(64, 48), model="ghost", headers={"Prefer": "respond-async"}).headers[
        "location"
    ]
    redis_server.stop()
    assert_error(
        server.remove(key, subject_image(64, 48), model="ghost", headers={"Prefer": "respond-async"}),
        503,
        "service_unavailable",
    )
    assert_error(requests.get(server.url + location, headers={"ApiKey": key}, timeout=10), 503, "service_unavailable")
    assert_error(
        requests.post(server.url + "/v2/batches", headers={"ApiKey": key}, json={"items": [{"image_url": "x"}]}),
        503,
        "service_unavailable",
    )
    redis_server.start()
    # The job queued before the outage is still there, and another replica (which runs jobs) finishes it.
    runner = start_server(CUTOUT_REDIS_URL=redis_server.url, **LEASE)
    wait_until(
        lambda: (
            requests.get(runner.url + location, headers={"ApiKey": key}, timeout=10).json()["status"] == "succeeded"
        ),
        60,
        "the job queued before the outage",
    )
    assert runner.balance(key) == 4


def _queued_metric(server: LiveServer) -> float:
    text = requests.get(server.url + "/metrics", timeout=10).text
    return float(re.search(r"^cutout_jobs_queued (\S+)$", text, re.M).group(1))


@pytest.mark.parametrize("engine", ["sqlite", "redis"])
def test_position_counts_exactly_the_queued_jobs_ahead(
    engine: str, start_server: Callable[..., LiveServer], start_redis: Callable[[], RedisServer]
) -> None:
    """A replica that runs no job: positions and the queue's depth as jobs are queued, cancelled and batched."""
    env = {"CUTOUT_JOB_WORKERS": "0"}
    if engine == "redis":
        redis_server = start_redis()
        env["CUTOUT_REDIS_URL"] = redis_server.url
    server = start_server(**env)
    key = server.create_key(10)
    headers = {"ApiKey": key}
    locations = [submit(server, key).headers["location"] for _ in range(4)]

    def positions() -> list[int | None]:
        return [job_of(server, key, location).get("position") for location in locations]

    assert positions() == [0, 1, 2, 3]
    cancelled = requests.delete(server.url + locations[1], headers=headers, timeout=10)
    assert cancelled.status_code == 200
    assert positions() == [0, None, 1, 2]  # the cancelled job is no longer ahead of anyone
    batch = requests.post(
        server.url + "/v2/batches",
        headers=headers,
        files=[("images", (f"{i}.jpg", TINY, "image/jpeg")) for i in range(2)],
        data={"model": "ghost"},
        timeout=30,
    ).json()
    locations += [item["url"] for item in batch["items"]]
    assert positions() == [0, None, 1, 2, 3, 4]
    requests.delete(server.url + locations[0], headers=headers, timeout=10)
    assert positions() == [None, None, 0, 1, 2, 3]
    if engine == "redis":
        # A replica that read the next entry and died before starting its job: the entry is left pending, the
        # job still queued (another replica reclaims it after job_lease_s), so still ahead of the others.
        redis_server.client().xreadgroup("runners", "dead-replica", {"cutout:jobs:stream": ">"}, count=1)
        assert positions() == [None, None, 0, 1, 2, 3]
    wait_until(lambda: _queued_metric(server) == 4, 15, "cutout_jobs_queued to count the 4 queued jobs")
