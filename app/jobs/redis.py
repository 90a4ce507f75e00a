"""The queue engine on Redis: every replica shares the jobs, their inputs, results and batches.

The queue is a stream (`cutout:jobs:stream`) read through one consumer group: XREADGROUP hands
each entry to one replica, and the entry stays in the group's pending list until that replica
acknowledges it (XACK + XDEL) when the job is over. A replica that dies mid-job stops renewing
its claim (XCLAIM to itself, which resets the entry's idle time, every lease/3); once the entry
has been idle for `job_lease_s`, any replica's XAUTOCLAIM takes it over and runs the job again.
The credits side is idempotent per reservation, so a job run twice is charged once.

Why streams rather than a job library (arq, saq, taskiq): the contract needs a compare-and-set on
each job's status (cancel vs claim, expiry vs claim, a stalled replica vs its successor), our
ledger and our fail-closed Redis client; streams give at-least-once delivery and reclaiming with
four commands and no second dependency, and the job records stay in our own keys.

The keys and the Lua scripts: app/jobs/redis_scripts.py.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Collection
from dataclasses import replace
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from app.jobs.engine import Claimed, IdempotencyConflict, Submitted
from app.jobs.model import TERMINAL, Batch, Job, Payload
from app.jobs.redis_scripts import (
    BATCH_BACKSTOP_S,
    DEADLINES,
    DUE,
    GROUP,
    HEARTBEAT,
    MASTER,
    POSITION,
    PREFIX,
    QUEUED,
    REQUEUE,
    SEQ,
    STREAM,
    SUBMIT,
    UPDATE,
    WEBHOOKS,
    as_bytes,
    as_text,
    batch_key,
    input_key,
    job_key,
    result_key,
)
from app.store.redis_client import client_options, fail_closed


class RedisJobs:
    def __init__(self, url: str, ttl_s: float) -> None:
        self._redis = aioredis.Redis.from_url(url, decode_responses=False, **client_options())
        self._ttl_s = ttl_s
        self._submit = self._redis.register_script(SUBMIT)
        self._update = self._redis.register_script(UPDATE)
        self._heartbeat = self._redis.register_script(HEARTBEAT)
        self._requeue = self._redis.register_script(REQUEUE)
        self._due = self._redis.register_script(DUE)
        self._position = self._redis.register_script(POSITION)
        self._group_ready = False

    async def _ensure_group(self) -> None:
        if self._group_ready:
            return
        try:
            await self._redis.xgroup_create(STREAM, GROUP, id="0", mkstream=True)
        except ResponseError as err:
            if "BUSYGROUP" not in str(err):
                raise
        self._group_ready = True

    def _ttl_ms(self) -> int:
        return max(1, int(self._ttl_s * 1000))

    @staticmethod
    def _found(reply: list[Any]) -> Submitted:
        if as_text(reply[0]) == "conflict":
            raise IdempotencyConflict()
        return Submitted(as_text(reply[1]), as_text(reply[2]), replayed=as_text(reply[0]) == "replay")

    @fail_closed
    async def find_submission(self, key: str, fingerprint: str) -> Submitted | None:
        seen = await self._redis.hmget(f"{PREFIX}jobsub:{key}", ["fingerprint", "kind", "ref"])
        if seen[0] is None:
            return None
        return self._found([b"replay" if as_text(seen[0]) == fingerprint else b"conflict", seen[1], seen[2]])

    @fail_closed
    async def submit(
        self, jobs: list[tuple[Job, Payload]], batch: Batch | None, idempotency: tuple[str, str, float] | None
    ) -> Submitted:
        await self._ensure_group()
        kind, ref = ("batch", batch.id) if batch else ("job", jobs[0][0].id)
        key, fingerprint, window = idempotency if idempotency else ("", "", 0.0)
        args: list[Any] = [
            PREFIX,
            f"{PREFIX}jobsub:{key}" if key else "",
            fingerprint,
            int(window * 1000),
            kind,
            ref,
            batch.id if batch else "",
            batch.dumps() if batch else "",
            BATCH_BACKSTOP_S + int(self._ttl_s),
            self._ttl_ms(),
        ]
        for job, payload in jobs:
            args += [
                job.id,
                job.status,
                job.dumps(),
                repr(job.deadline),
                payload.meta(),
                payload.image or b"",
                payload.bg_image or b"",
            ]
        return self._found(await self._submit(keys=[STREAM], args=args))

    @fail_closed
    async def get(self, job_id: str) -> Job | None:
        doc = await self._redis.hget(job_key(job_id), "doc")
        return None if doc is None else Job.loads(as_text(doc))

    @fail_closed
    async def get_many(self, job_ids: list[str]) -> list[Job]:
        async with self._redis.pipeline(transaction=False) as pipe:
            for job_id in job_ids:
                pipe.hget(job_key(job_id), "doc")
            docs = await pipe.execute()
        return [Job.loads(as_text(doc)) for doc in docs if doc is not None]

    @fail_closed
    async def get_batch(self, batch_id: str) -> Batch | None:
        doc = await self._redis.hget(batch_key(batch_id), "doc")
        return None if doc is None else Batch.loads(as_text(doc))

    @fail_closed
    async def put_batch(self, batch: Batch) -> None:
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.hset(batch_key(batch.id), "doc", batch.dumps())
            if batch.completed_at is not None:  # it goes with its last item, job_ttl_s after it ended
                pipe.pexpireat(batch_key(batch.id), int(batch.completed_at * 1000) + self._ttl_ms())
            await pipe.execute()

    @fail_closed
    async def position(self, job: Job) -> int:
        # Exact: jobs:queued holds the queued jobs (and only them) in the order the stream hands them out.
        return max(0, int(await self._position(keys=[QUEUED], args=[job.id])))

    async def _set_status(self, job: Job, gone_at: str, expect: Collection[str]) -> bool:
        """The compare-and-set on the job's status; a job no longer queued leaves the queue's sorted sets."""
        keys = [job_key(job.id), QUEUED, DEADLINES]
        return bool(await self._update(keys=keys, args=[job.id, job.status, job.dumps(), gone_at, *expect]))

    async def _take(self, job_id: str, entry: str, worker: str) -> Claimed | None:
        """The job of a stream entry this worker was handed, now running; None (entry acknowledged)
        when it is over already (cancelled or expired while queued, or finished by a stalled owner)."""
        raw = await self._redis.hgetall(job_key(job_id))
        if not raw or as_text(raw[b"status"]) in TERMINAL:
            await self._ack(entry)
            return None
        job = Job.loads(as_text(raw[b"doc"]))
        job = replace(job, status="running", started_at=time.time(), runs=job.runs + 1)
        if not await self._set_status(job, "", ("queued", "running")):
            await self._ack(entry)
            return None
        await self._redis.hset(job_key(job_id), "entry", entry)
        data = await self._redis.hmget(input_key(job_id), ["meta", "image", "bg_image"])
        if data[0] is None:  # its input is gone: nothing can run it
            return Claimed(job, Payload(None, None, None, {}, None, None, False))
        return Claimed(job, Payload.from_parts(as_text(data[0]), as_bytes(data[1]), as_bytes(data[2])))

    async def _ack(self, entry: str) -> None:
        await self._redis.xack(STREAM, GROUP, entry)
        await self._redis.xdel(STREAM, entry)

    @fail_closed
    async def claim(self, worker: str, lease_s: float, wait_s: float) -> Claimed | None:
        await self._ensure_group()
        # Stalled entries first: a replica that died mid-job left them pending past the lease.
        reply: Any = await self._redis.xautoclaim(STREAM, GROUP, worker, int(lease_s * 1000), "0-0", count=1)
        entries: Any = reply[1]
        if not entries:
            block_ms = max(1, int(min(wait_s, 1.0) * 1000))  # under the client's socket timeout
            read: Any = await self._redis.xreadgroup(GROUP, worker, {STREAM: ">"}, count=1, block=block_ms)
            entries = read[0][1] if read else []
        for entry_id, fields in entries:
            if fields is None:  # deleted meanwhile
                await self._ack(as_text(entry_id))
                continue
            claimed = await self._take(as_text(fields[b"job"]), as_text(entry_id), worker)
            if claimed is not None:
                return claimed
        return None

    @fail_closed
    async def heartbeat(self, job_id: str, worker: str, lease_s: float) -> bool:
        return bool(await self._heartbeat(keys=[job_key(job_id), STREAM], args=[GROUP, worker]))

    @fail_closed
    async def update(self, job: Job, expect: Collection[str]) -> bool:
        # The record goes with its result, job_ttl_s after the job ended (the same instant when a webhook
        # attempt rewrites it later).
        gone_at = str(int((job.finished_at or time.time()) * 1000) + self._ttl_ms()) if job.terminal else ""
        done = await self._set_status(job, gone_at, expect)
        if done and job.terminal:
            await self._redis.delete(input_key(job.id))
        return done

    @fail_closed
    async def release(self, job_id: str, worker: str) -> None:
        entry = await self._redis.hget(job_key(job_id), "entry")
        if entry is not None:
            await self._ack(as_text(entry))

    @fail_closed
    async def requeue(self, job: Job, worker: str) -> bool:
        return bool(
            await self._requeue(
                keys=[job_key(job.id), STREAM, DEADLINES, QUEUED, SEQ],
                args=[GROUP, worker, job.dumps(), job.id, repr(job.deadline)],
            )
        )

    @fail_closed
    async def put_result(self, job_id: str, body: bytes, ttl_s: float) -> None:
        await self._redis.set(result_key(job_id), body, px=int(ttl_s * 1000))

    @fail_closed
    async def get_result(self, job_id: str) -> bytes | None:
        return as_bytes(await self._redis.get(result_key(job_id)))

    @fail_closed
    async def schedule_webhook(self, target: str, due_at: float) -> None:
        await self._redis.zadd(WEBHOOKS, {target: due_at})

    @fail_closed
    async def due_webhooks(self, now: float, lease_s: float) -> list[str]:
        due: Any = await self._due(keys=[WEBHOOKS], args=[repr(now), repr(now + lease_s)])
        return [as_text(target) for target in due]

    @fail_closed
    async def drop_webhook(self, target: str) -> None:
        await self._redis.zrem(WEBHOOKS, target)

    @fail_closed
    async def queue_depth(self) -> int:
        return int(await self._redis.zcard(QUEUED))

    @fail_closed
    async def overdue(self, now: float) -> list[Job]:
        ids = await self._redis.zrangebyscore(DEADLINES, "-inf", now, start=0, num=500)
        return await self.get_many([as_text(i) for i in ids])

    async def purge(self, now: float, keep_s: float) -> int:
        return 0  # finished jobs' keys expire by themselves (EXPIRE at their end)

    @fail_closed
    async def master_key(self) -> bytes:
        await self._redis.set(MASTER, secrets.token_bytes(32), nx=True)
        key = as_bytes(await self._redis.get(MASTER))
        assert key is not None
        return key

    async def close(self) -> None:
        await self._redis.aclose()
