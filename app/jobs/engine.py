"""The queue engine contract: what the submission routes, the runner and the webhook sender
need of a place that keeps jobs. Two engines keep it: SQLite in the data dir (the embedded
default, app/jobs/sqlite.py) and Redis streams with a consumer group (app/jobs/redis.py).

Every state change is a compare-and-set on the job's status, so a replica that lost its lease
(it stalled, or died and came back) cannot overwrite what another one did; the ledger side is
idempotent per reservation (Store.commit/refund), so a job run twice is charged once.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from typing import Protocol

from app.jobs.model import Batch, Job, Payload


@dataclass(frozen=True)
class Claimed:
    job: Job
    payload: Payload


@dataclass(frozen=True)
class Submitted:
    """What an idempotent submission found: the ids created now, or those a previous one made."""

    kind: str  # "job" | "batch"
    id: str
    replayed: bool


class IdempotencyConflict(Exception):
    """The Idempotency-Key names another submission (other fingerprint)."""


class JobEngine(Protocol):
    async def submit(
        self,
        jobs: list[tuple[Job, Payload]],
        batch: Batch | None,
        idempotency: tuple[str, str, float] | None,
    ) -> Submitted:
        """Store the jobs (and their batch) and queue them, in one step. With (key digest,
        fingerprint, window): a key seen before returns what it made (replayed) and stores nothing,
        or raises IdempotencyConflict for another fingerprint."""
        ...

    async def find_submission(self, key: str, fingerprint: str) -> Submitted | None:
        """What a previous submission under the key made; IdempotencyConflict for another fingerprint."""
        ...

    async def get(self, job_id: str) -> Job | None: ...

    async def get_many(self, job_ids: list[str]) -> list[Job]: ...

    async def get_batch(self, batch_id: str) -> Batch | None: ...

    async def put_batch(self, batch: Batch) -> None:
        """Replace the batch's document (its webhook state, its completion time)."""
        ...

    async def position(self, job: Job) -> int:
        """How many queued jobs (every account's) will be started before this queued one: exact."""
        ...

    async def claim(self, worker: str, lease_s: float, wait_s: float) -> Claimed | None:
        """The next queued job (or a running one whose lease ran out), now running for `worker`;
        None when there is none within `wait_s`."""
        ...

    async def heartbeat(self, job_id: str, worker: str, lease_s: float) -> bool:
        """Keep the lease; False when another worker has taken the job over."""
        ...

    async def update(self, job: Job, expect: Collection[str]) -> bool:
        """Write the job if its stored status is one of `expect` (compare-and-set)."""
        ...

    async def release(self, job_id: str, worker: str) -> None:
        """The worker is done with the job's queue entry (terminal, or requeued by `requeue`)."""
        ...

    async def requeue(self, job: Job, worker: str) -> bool:
        """Running -> queued again (preempted by a synchronous request, or no worker free)."""
        ...

    async def put_result(self, job_id: str, body: bytes, ttl_s: float) -> None: ...

    async def get_result(self, job_id: str) -> bytes | None: ...

    async def schedule_webhook(self, target: str, due_at: float) -> None:
        """target: "job:{id}" or "batch:{id}"."""
        ...

    async def due_webhooks(self, now: float, lease_s: float) -> list[str]:
        """Targets whose webhook is due, each leased for `lease_s` (another replica skips it)."""
        ...

    async def drop_webhook(self, target: str) -> None: ...

    async def queue_depth(self) -> int: ...

    async def overdue(self, now: float) -> list[Job]:
        """Queued jobs past their deadline (to be expired and refunded)."""
        ...

    async def purge(self, now: float, keep_s: float) -> int:
        """Remove jobs, results and batches finished more than keep_s ago; how many jobs went."""
        ...

    async def master_key(self) -> bytes:
        """The secret the accounts' webhook secrets derive from, made once and kept."""
        ...

    async def close(self) -> None: ...
