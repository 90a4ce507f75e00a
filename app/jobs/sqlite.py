"""The embedded queue engine: jobs, inputs, results and batches in one SQLite file in the data
dir (jobs.sqlite3, beside the accounts' file), fsynced, so a restart loses nothing.

A worker claims a job by giving it a lease (owner, lease_until) in one UPDATE; while it runs
it renews the lease; a job whose lease ran out (the process died) is claimed again, by
this process after its restart or by another one sharing the data dir.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import sqlite3
import threading
import time
from collections.abc import Callable, Collection
from dataclasses import replace
from pathlib import Path
from typing import TypeVar

import anyio.to_thread

from app.jobs.engine import Claimed, IdempotencyConflict, Submitted
from app.jobs.model import Batch, Job, Payload
from app.jobs.sqlite_schema import open_jobs_database, purge_finished
from app.store.sqlite import transaction

T = TypeVar("T")

POLL_S = 0.1


class SqliteJobs:
    def __init__(self, path: Path) -> None:
        self._db = open_jobs_database(path)
        self._lock = threading.Lock()
        self._wake = asyncio.Event()
        self._wal_holds_removed = False  # the last checkpoint after a removal could not empty the WAL

    async def _run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        def locked() -> T:
            with self._lock:
                return fn(self._db)

        return await anyio.to_thread.run_sync(locked)

    async def _tx(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        return await self._run(lambda db: transaction(db, fn))

    @staticmethod
    def _find(db: sqlite3.Connection, key: str, fingerprint: str) -> Submitted | None:
        row = db.execute(
            "SELECT fingerprint, kind, ref FROM submissions WHERE key = ? AND expires_at > ?", (key, time.time())
        ).fetchone()
        if row is None:
            return None
        if row[0] != fingerprint:
            raise IdempotencyConflict()
        return Submitted(row[1], row[2], replayed=True)

    async def find_submission(self, key: str, fingerprint: str) -> Submitted | None:
        return await self._run(lambda db: self._find(db, key, fingerprint))

    async def submit(
        self, jobs: list[tuple[Job, Payload]], batch: Batch | None, idempotency: tuple[str, str, float] | None
    ) -> Submitted:
        made = Submitted("batch", batch.id, False) if batch else Submitted("job", jobs[0][0].id, False)

        def op(db: sqlite3.Connection) -> Submitted:
            if idempotency is not None:
                key, fingerprint, window = idempotency
                if (seen := self._find(db, key, fingerprint)) is not None:
                    return seen
                db.execute(
                    "INSERT OR REPLACE INTO submissions (key, fingerprint, kind, ref, expires_at) VALUES (?, ?, ?, ?, ?)",
                    (key, fingerprint, made.kind, made.id, time.time() + window),
                )
            for job, payload in jobs:
                status = job.status
                db.execute(
                    "INSERT INTO jobs (id, status, doc, deadline, finished_at) VALUES (?, ?, ?, ?, ?)",
                    (job.id, status, job.dumps(), job.deadline, job.finished_at),
                )
                db.execute(
                    "INSERT INTO job_inputs (id, meta, image, bg_image) VALUES (?, ?, ?, ?)",
                    (job.id, payload.meta(), payload.image, payload.bg_image),
                )
            if batch is not None:
                db.execute(
                    "INSERT INTO batches (id, doc, created_at) VALUES (?, ?, ?)",
                    (batch.id, batch.dumps(), batch.created_at),
                )
            return made

        result = await self._tx(op)
        self._wake.set()
        return result

    async def get(self, job_id: str) -> Job | None:
        row = await self._run(lambda db: db.execute("SELECT doc FROM jobs WHERE id = ?", (job_id,)).fetchone())
        return None if row is None else Job.loads(row[0])

    async def get_many(self, job_ids: list[str]) -> list[Job]:
        def op(db: sqlite3.Connection) -> list[Job]:
            marks = ",".join("?" * len(job_ids))
            rows = db.execute(f"SELECT id, doc FROM jobs WHERE id IN ({marks})", job_ids).fetchall()
            found = {row[0]: Job.loads(row[1]) for row in rows}
            return [found[i] for i in job_ids if i in found]

        return await self._run(op) if job_ids else []

    async def get_batch(self, batch_id: str) -> Batch | None:
        row = await self._run(lambda db: db.execute("SELECT doc FROM batches WHERE id = ?", (batch_id,)).fetchone())
        return None if row is None else Batch.loads(row[0])

    async def put_batch(self, batch: Batch) -> None:
        await self._run(lambda db: db.execute("UPDATE batches SET doc = ? WHERE id = ?", (batch.dumps(), batch.id)))

    async def position(self, job: Job) -> int:
        def op(db: sqlite3.Connection) -> int:
            row = db.execute(
                "SELECT COUNT(*) FROM jobs WHERE status = 'queued' AND seq < (SELECT seq FROM jobs WHERE id = ?)",
                (job.id,),
            ).fetchone()
            return int(row[0])

        return await self._run(op)

    async def claim(self, worker: str, lease_s: float, wait_s: float) -> Claimed | None:
        deadline = time.monotonic() + wait_s
        while True:
            self._wake.clear()
            found = await self._tx(lambda db: self._claim(db, worker, lease_s))
            if found is not None or time.monotonic() >= deadline:
                return found
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), min(POLL_S * 5, max(0.0, deadline - time.monotonic())))

    @staticmethod
    def _claim(db: sqlite3.Connection, worker: str, lease_s: float) -> Claimed | None:
        at = time.time()
        row = db.execute(
            "SELECT id, doc FROM jobs WHERE status = 'queued' OR (status = 'running' AND lease_until < ?)"
            " ORDER BY seq LIMIT 1",
            (at,),
        ).fetchone()
        if row is None:
            return None
        job = replace(Job.loads(row[1]), status="running", started_at=at, runs=Job.loads(row[1]).runs + 1)
        db.execute(
            "UPDATE jobs SET status = 'running', doc = ?, owner = ?, lease_until = ? WHERE id = ?",
            (job.dumps(), worker, at + lease_s, job.id),
        )
        data = db.execute("SELECT meta, image, bg_image FROM job_inputs WHERE id = ?", (job.id,)).fetchone()
        return Claimed(job, Payload.from_parts(data[0], data[1], data[2]))

    async def heartbeat(self, job_id: str, worker: str, lease_s: float) -> bool:
        cur = await self._run(
            lambda db: db.execute(
                "UPDATE jobs SET lease_until = ? WHERE id = ? AND owner = ?", (time.time() + lease_s, job_id, worker)
            )
        )
        return cur.rowcount == 1

    async def update(self, job: Job, expect: Collection[str]) -> bool:
        statuses = list(expect)

        def op(db: sqlite3.Connection) -> bool:
            marks = ",".join("?" * len(statuses))
            cur = db.execute(
                f"UPDATE jobs SET status = ?, doc = ?, finished_at = ? WHERE id = ? AND status IN ({marks})",
                (job.status, job.dumps(), job.finished_at, job.id, *statuses),
            )
            if cur.rowcount and job.terminal:
                db.execute("DELETE FROM job_inputs WHERE id = ?", (job.id,))
            return cur.rowcount == 1

        return await self._tx(op)

    async def release(self, job_id: str, worker: str) -> None:
        await self._run(
            lambda db: db.execute(
                "UPDATE jobs SET owner = NULL, lease_until = 0 WHERE id = ? AND owner = ?", (job_id, worker)
            )
        )

    async def requeue(self, job: Job, worker: str) -> bool:
        def op(db: sqlite3.Connection) -> bool:
            cur = db.execute(
                "UPDATE jobs SET status = 'queued', doc = ?, owner = NULL, lease_until = 0"
                " WHERE id = ? AND status = 'running' AND owner = ?",
                (job.dumps(), job.id, worker),
            )
            return cur.rowcount == 1

        done = await self._tx(op)
        self._wake.set()
        return done

    async def put_result(self, job_id: str, body: bytes, ttl_s: float) -> None:
        await self._run(
            lambda db: db.execute(
                "INSERT OR REPLACE INTO job_results (id, body, expires_at) VALUES (?, ?, ?)",
                (job_id, body, time.time() + ttl_s),
            )
        )

    async def get_result(self, job_id: str) -> bytes | None:
        row = await self._run(
            lambda db: db.execute(
                "SELECT body FROM job_results WHERE id = ? AND expires_at > ?", (job_id, time.time())
            ).fetchone()
        )
        return None if row is None else bytes(row[0])

    async def schedule_webhook(self, target: str, due_at: float) -> None:
        await self._run(
            lambda db: db.execute("INSERT OR REPLACE INTO webhooks (target, due_at) VALUES (?, ?)", (target, due_at))
        )

    async def due_webhooks(self, now: float, lease_s: float) -> list[str]:
        def op(db: sqlite3.Connection) -> list[str]:
            rows = db.execute("SELECT target FROM webhooks WHERE due_at <= ? ORDER BY due_at LIMIT 50", (now,))
            targets = [row[0] for row in rows.fetchall()]
            for target in targets:
                db.execute("UPDATE webhooks SET due_at = ? WHERE target = ?", (now + lease_s, target))
            return targets

        return await self._tx(op)

    async def drop_webhook(self, target: str) -> None:
        await self._run(lambda db: db.execute("DELETE FROM webhooks WHERE target = ?", (target,)))

    async def queue_depth(self) -> int:
        row = await self._run(lambda db: db.execute("SELECT COUNT(*) FROM jobs WHERE status = 'queued'").fetchone())
        return int(row[0])

    async def overdue(self, now: float) -> list[Job]:
        rows = await self._run(
            lambda db: db.execute(
                "SELECT doc FROM jobs WHERE status = 'queued' AND deadline < ? LIMIT 500", (now,)
            ).fetchall()
        )
        return [Job.loads(row[0]) for row in rows]

    async def purge(self, now: float, keep_s: float) -> int:
        def op(db: sqlite3.Connection) -> int:
            removed = transaction(db, lambda db: purge_finished(db, now, now - keep_s))
            if removed[1] or self._wal_holds_removed:
                # secure_delete zeroed the freed pages, but the WAL still holds the frames written before: a TRUNCATE
                # checkpoint copies the zeroed pages into the database file and empties the WAL, so the removed
                # results leave the data dir's files now, not whenever SQLite would overwrite them. Another
                # process reading the file can make it give up (busy): tried again on the next pass.
                busy = db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0]
                self._wal_holds_removed = bool(busy)
            return removed[0]

        return await self._run(op)

    async def master_key(self) -> bytes:
        def op(db: sqlite3.Connection) -> bytes:
            db.execute(
                "INSERT OR IGNORE INTO meta (name, value) VALUES ('webhook_master', ?)", (secrets.token_bytes(32),)
            )
            return bytes(db.execute("SELECT value FROM meta WHERE name = 'webhook_master'").fetchone()[0])

        return await self._tx(op)

    async def close(self) -> None:
        await self._run(lambda db: db.close())
