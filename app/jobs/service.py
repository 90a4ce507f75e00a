"""Asynchronous jobs and batches: submission (credits reserved), and the loops that run them.

One JobService per process, built by create_app's lifespan. Its loops:
- `job_workers` runners (app/jobs/runner.py): claim a job when no synchronous request is in the
  gate, run it as a preemptible background job (a synchronous request arriving stops it; it is
  queued again);
- the webhook sender (app/jobs/sender.py): due deliveries, signed, retried with exponential backoff;
- housekeeping: expires jobs nobody ran within job_ttl_s (refunded), removes old results.
How a job ends (charged on delivery, refunded on failure, cancel or expiry): app/jobs/settle.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import socket
from dataclasses import dataclass, replace

import anyio

from app.accounts import billing
from app.accounts.pricing import Output
from app.errors import ApiError
from app.http import metrics
from app.inference.gate import WorkerGate
from app.inference.registry import ModelRegistry
from app.jobs.engine import JobEngine, Submitted
from app.jobs.model import Batch, Job, Payload, Webhook, new_batch_id, new_job_id, now
from app.jobs.runner import Runner, accept
from app.jobs.sender import WebhookSender
from app.jobs.settle import Settlement, error_object
from app.removal import fetch
from app.removal import job as planning
from app.removal.submission import Submission
from app.settings import Settings
from app.store import Account, Store, StoreUnavailable

log = logging.getLogger("cutout.jobs")

HOUSEKEEPING_S = 5.0


def open_engine(settings: Settings) -> JobEngine:
    """Redis streams when CUTOUT_REDIS_URL is set (shared by replicas), else SQLite in the data dir."""
    if settings.redis_url:
        from app.jobs.redis import RedisJobs

        return RedisJobs(settings.redis_url, settings.job_ttl_s)
    from app.jobs.sqlite import SqliteJobs

    return SqliteJobs(settings.data_dir / "jobs.sqlite3")


@dataclass(frozen=True)
class Item:
    """One job to submit: its input and what was decided for it at submission."""

    payload: Payload
    output: Output
    model: str
    credits: int
    error: ApiError | None = None  # refused at submission: recorded as a failed item, nothing reserved
    name: str | None = None


@dataclass(frozen=True)
class Order:
    """One submission's common facts, shared by each of its jobs."""

    account: Account
    request_id: str
    at: float
    batch_id: str | None
    webhook: Webhook | None


class JobService:
    def __init__(
        self, settings: Settings, engine: JobEngine, store: Store, registry: ModelRegistry, gate: WorkerGate
    ) -> None:
        self.settings = settings
        self.engine = engine
        self.store = store
        self.registry = registry
        self.worker = f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"
        self.settlement = Settlement(engine, store, self.worker)
        self.runner = Runner(settings, engine, store, registry, gate, self.settlement)
        self.sender = WebhookSender(settings, engine)
        self._tasks: list[asyncio.Task[None]] = []

    # --- planning (shared with the synchronous route: app/removal/plan.py, app/removal/job.py) ---

    async def price(self, sub: Submission, output: Output, accept_json: bool) -> Item:
        """The item's model and cost, or the 400 its options get (at submission: nothing is fetched yet)."""
        if sub.image_url is not None and not self.settings.fetch_enabled:
            raise fetch.forbidden("This server does not fetch image URLs; upload the image instead.")
        pipeline, then = planning.choose_model(sub, self.settings, self.registry)
        wanted = accept(accept_json)
        asked = await planning.order(sub, pipeline, output, wanted, self.settings, fetch_background=False, then=then)
        return Item(Payload.of(sub, accept_json), output, asked.model, asked.price)

    async def secret(self, account_id: str) -> str:
        return await self.sender.secret(account_id)

    # --- submission ---

    async def submit(
        self,
        account: Account,
        items: list[Item],
        *,
        request_id: str,
        batch: bool,
        webhook_url: str | None,
        idempotency: tuple[str, str, float] | None,
    ) -> tuple[str, str, bool]:
        """Reserve every item's credits (all or none: 402 before anything runs), store and queue the
        jobs. Returns (kind, id, replayed)."""
        if idempotency is not None:
            seen = await self.engine.find_submission(idempotency[0], idempotency[1])
            if seen is not None:
                return seen.kind, seen.id, True
        hook = Webhook(webhook_url) if webhook_url else None
        order = Order(account, request_id, now(), new_batch_id() if batch else None, hook)
        reserved = await self._reserve(order, items)
        record = None
        if order.batch_id is not None:
            job_ids = [job.id for job, _ in reserved]
            record = Batch(order.batch_id, account.id, job_ids, order.at, request_id, webhook=hook)
        made = await self._store(reserved, record, idempotency)
        if made.replayed:  # a concurrent submission under the same key won: ours is given back
            await self._refund_all(reserved)
        else:
            await self._ended_at_submission([job for job, _ in reserved], order.batch_id)
        metrics.JOBS_SUBMITTED.inc(len(reserved))
        return made.kind, made.id, made.replayed

    def _new_job(self, order: Order, item: Item, index: int) -> Job:
        job = Job(
            id=new_job_id(),
            account_id=order.account.id,
            output=item.output,
            model=item.model,
            request_id=order.request_id,
            reservation_id="",
            credits=0,
            created_at=order.at,
            deadline=order.at + self.settings.job_ttl_s,
            batch_id=order.batch_id,
            index=index,
            name=item.name,
            webhook=order.webhook,  # a batch's items too: each one's end is posted, then the batch's
        )
        if item.error is not None:
            return replace(job, status="failed", finished_at=order.at, error=error_object(item.error, order.request_id))
        return job

    async def _reserve(self, order: Order, items: list[Item]) -> list[tuple[Job, Payload]]:
        """Each item's job, its credits held (until job_ttl_s and two leases have passed: the queue
        engine, not the store's sweeper, settles it); all given back if one cannot be held."""
        hold = self.settings.job_ttl_s + 2 * self.settings.job_lease_s
        reserved: list[tuple[Job, Payload]] = []
        try:
            for index, item in enumerate(items):
                job = self._new_job(order, item, index)
                if item.error is None:
                    credits = 0 if order.account.unlimited else item.credits  # an unlimited account pays nothing
                    await billing.reserve(self.store, order.account, credits, job.id, None, hold_s=hold)
                    job = replace(job, reservation_id=job.id, credits=credits)
                reserved.append((job, item.payload))
        except BaseException:
            await self._refund_all(reserved)
            raise
        return reserved

    async def _ended_at_submission(self, jobs: list[Job], batch_id: str | None) -> None:
        """Items refused at submission have ended already: their webhooks are due, and the batch is
        completed when every item was refused."""
        for job in jobs:
            if job.terminal and job.webhook is not None:
                await self.engine.schedule_webhook(f"job:{job.id}", now())
        if batch_id is not None:
            await self.settlement.batch_progress(batch_id)

    async def _store(
        self, reserved: list[tuple[Job, Payload]], record: Batch | None, idempotency: tuple[str, str, float] | None
    ) -> Submitted:
        try:
            return await self.engine.submit(reserved, record, idempotency)
        except BaseException:
            await self._refund_all(reserved)
            raise

    async def _refund_all(self, reserved: list[tuple[Job, Payload]]) -> None:
        with anyio.CancelScope(shield=True):
            for job, _ in reserved:
                if job.reservation_id:
                    await self.store.refund(job.reservation())

    async def cancel(self, job: Job) -> bool:
        """Cancel a queued job (refunded); False when it has started or ended."""
        return await self.settlement.settle(job, "cancelled", expect=("queued",))

    # --- the loops ---

    def start(self) -> None:
        for _ in range(self.settings.job_workers):
            self._tasks.append(asyncio.create_task(self.runner.run_forever()))
        self._tasks.append(asyncio.create_task(self.sender.run_forever()))
        self._tasks.append(asyncio.create_task(self._housekeeping_forever()))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    async def _housekeeping_forever(self) -> None:
        interval = min(HOUSEKEEPING_S, self.settings.job_ttl_s / 4)
        while True:
            try:
                await self.housekeeping()
            except asyncio.CancelledError:
                raise
            except StoreUnavailable:
                pass
            except Exception:
                log.exception("job housekeeping")
            await asyncio.sleep(interval)

    async def housekeeping(self) -> None:
        for job in await self.engine.overdue(now()):
            await self.settlement.settle(job, "expired", expect=("queued",))
        await self.engine.purge(now(), self.settings.job_ttl_s)
        metrics.JOBS_QUEUED.set(await self.engine.queue_depth())
