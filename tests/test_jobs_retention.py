"""Retention (job_ttl_s): job_ttl_s after a job ends, its result and its record are removed on
each engine, and its batch with its last item. Afterwards every read answers 404 job_not_found in
our error shape, and the bytes are gone: from the embedded engine's files in the data dir (deleted
rows overwritten, the WAL emptied), or from Redis (the keys). Real uvicorn servers, a real
redis-server, a short retention set through the environment.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import redis
import requests
from jobs_harness import TINY, finished, submit

from harness import LiveServer, RedisServer, assert_error, wait_until

RETENTION_S = 12  # long enough for a tiny ghost job to run and be read before it goes, on a loaded machine


def _windows(data: bytes, size: int = 32, step: int = 61) -> list[bytes]:
    """Slices of `data`: a blob spans several SQLite pages, so it is searched for piece by piece."""
    return [data[i : i + size] for i in range(0, len(data) - size, step)]


def _found_in_files(folder: Path, data: bytes) -> int:
    """How many of `data`'s slices some file under `folder` holds."""
    files = b"".join(path.read_bytes() for path in folder.rglob("*") if path.is_file())
    return sum(window in files for window in _windows(data))


def _keys_of(client: redis.Redis, ref: str) -> list[bytes]:
    """The job engine's keys naming `ref`; the ledger's record of a charge (`resv:`, app/store/redis.py) is
    the store's, kept for accounting, and holds no job data."""
    keys = client.scan_iter(match=f"cutout:*{ref}*", count=1000)
    return sorted(k for k in keys if not k.startswith(b"cutout:resv:"))


def _a_job_and_a_batch(server: LiveServer, key: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """A job and a batch of one, submitted and finished."""
    job_location = submit(server, key).headers["location"]
    response = requests.post(
        server.url + "/v2/batches",
        headers={"ApiKey": key},
        files=[("images", ("a.png", TINY, "image/jpeg"))],
        data={"model": "ghost"},
        timeout=30,
    )
    assert response.status_code == 202, response.text
    return finished(server, key, job_location), finished(server, key, response.headers["location"])


@pytest.mark.parametrize("engine", ["sqlite", "redis"])
def test_a_finished_job_and_its_result_are_removed_after_the_retention_time(
    engine: str, start_server: Callable[..., LiveServer], start_redis: Callable[[], RedisServer], tmp_path: Path
) -> None:
    env = {"CUTOUT_JOB_TTL_S": str(RETENTION_S)}
    if engine == "redis":
        redis_server = start_redis()
        env["CUTOUT_REDIS_URL"] = redis_server.url
        client = redis.Redis.from_url(redis_server.url)
    server = start_server(data_dir=tmp_path / "data", **env)
    key = server.create_key(5)
    headers = {"ApiKey": key}
    job, batch = _a_job_and_a_batch(server, key)
    assert job["status"] == "succeeded" and batch["status"] == "completed"
    readable = [job["url"], job["result_url"], batch["url"], batch["zip_url"], batch["items"][0]["url"]]
    for path in readable:
        assert requests.get(server.url + path, headers=headers, timeout=10).status_code == 200, path
    result = requests.get(server.url + job["result_url"], headers=headers, timeout=10).content

    # Where the result is kept before its time: the checks after it can fail.
    if engine == "sqlite":
        assert _found_in_files(server.data_dir, result) >= len(_windows(result)) // 2
    else:
        assert client.get(f"cutout:jobout:{job['id']}") == result
        assert _keys_of(client, job["id"]) and _keys_of(client, batch["id"])

    def gone() -> bool:
        answers = [requests.get(server.url + path, headers=headers, timeout=10) for path in readable]
        return all(answer.status_code == 404 for answer in answers)

    wait_until(gone, RETENTION_S + 30, "the job, the batch and their results to be removed")
    for path in readable:
        assert_error(requests.get(server.url + path, headers=headers, timeout=10), 404, "job_not_found")
    if engine == "sqlite":
        assert _found_in_files(server.data_dir, result) == 0
        assert _found_in_files(server.data_dir, TINY) == 0  # the uploaded photos too
    else:
        refs = (job["id"], batch["id"], batch["items"][0]["id"])
        # Redis expires each key on its own (the same millisecond for a batch and its last item): a moment's grace.
        wait_until(lambda: all(_keys_of(client, ref) == [] for ref in refs), 5, "the job engine's keys to expire")
    assert server.balance(key) == 3  # the two delivered jobs stay charged: removal is not a refund
