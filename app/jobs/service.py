"""Asynchronous jobs and batches: submission (credits reserved), the runner (the same planning and
rendering as the synchronous route, through the same worker gate, after it), settlement (charged
on delivery, refunded on failure, cancel or expiry), webhooks and housekeeping.

One JobService per process, built by create_app's lifespan. Its loops:
- `job_workers` runners: claim a job when no synchronous request is in the gate, run it as a
  preemptible background job (a synchronous request arriving stops it; it is queued again);
- the webhook sender: due deliveries, signed, retried with exponential backoff;
- housekeeping: expires jobs nobody ran within job_ttl_s (refunded), removes old results.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import secrets
import socket
import time
from dataclasses import dataclass, replace
from typing import Any

import anyio

from app.accounts import billing
from app.accounts.billing import Bill
from app.accounts.pricing import Output
from app.errors import ApiError
from app.http import metrics
from app.inference.cancel import Cancelled
from app.inference.gate import Busy, Expired, WorkerGate
from app.inference.registry import ModelRegistry
from app.jobs import webhooks
from app.jobs.engine import Claimed, JobEngine
from app.jobs.model import Batch, Job, Payload, Webhook, new_job_id, now, webhook_secret
from app.removal import fetch, respond
from app.removal import job as planning
from app.removal.render import render
from app.removal.submission import Submission
from app.settings import Settings
from app.store import Account, Store, StoreUnavailable

log = logging.getLogger("cutout.jobs")

# A job preempted this many times runs to its end even if a synchronous request arrives (no starvation).
MAX_PREEMPTIONS = 3
IDLE_POLL_S = 0.05
HOUSEKEEPING_S = 5.0
WEBHOOK_POLL_S = 0.5


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


def _accept(accept_json: bool) -> str:
    """The Accept header `plan` reads: a job stores only whether the answer is JSON."""
    return "application/json" if accept_json else ""


def error_object(err: ApiError, request_id: str) -> dict[str, str]:
    return {"code": err.code, "message": err.message, "request_id": request_id}


class JobService:
    def __init__(
        self, settings: Settings, engine: JobEngine, store: Store, registry: ModelRegistry, gate: WorkerGate
    ) -> None:
        self.settings = settings
        self.engine = engine
        self.store = store
        self.registry = registry
        self.gate = gate
        self.worker = f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"
        self._tasks: list[asyncio.Task[None]] = []
        self._master: bytes | None = None

    # --- planning (shared with the synchronous route: app/removal/plan.py, app/removal/job.py) ---

    async def price(self, sub: Submission, output: Output, accept_json: bool) -> Item:
        """The item's model and cost, or the 400 its options get (at submission: nothing is fetched yet)."""
        if sub.image_url is not None and not self.settings.fetch_enabled:
            raise fetch.forbidden("This server does not fetch image URLs; upload the image instead.")
        pipeline, then = planning.choose_model(sub, self.settings, self.registry)
        accept = _accept(accept_json)
        asked = await planning.order(sub, pipeline, output, accept, self.settings, fetch_background=False, then=then)
        return Item(Payload.of(sub, accept_json), output, asked.model, asked.price)

    async def secret(self, account_id: str) -> str:
        if self._master is None:
            self._master = await self.engine.master_key()
        return webhook_secret(self._master, account_id)

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
        at = now()
        hold = self.settings.job_ttl_s + 2 * self.settings.job_lease_s
        reserved: list[tuple[Job, Payload]] = []
        batch_id = f"batch_{secrets.token_hex(12)}" if batch else None
        hook = Webhook(webhook_url) if webhook_url else None
        try:
            for index, item in enumerate(items):
                job = Job(
                    id=new_job_id(),
                    account_id=account.id,
                    output=item.output,
                    model=item.model,
                    request_id=request_id,
                    reservation_id="",
                    credits=0,
                    created_at=at,
                    deadline=at + self.settings.job_ttl_s,
                    batch_id=batch_id,
                    index=index,
                    name=item.name,
                    webhook=None if batch else hook,
                )
                if item.error is not None:
                    job = replace(job, status="failed", finished_at=at, error=error_object(item.error, request_id))
                else:
                    reservation_id = f"{job.id}"
                    credits = 0 if account.unlimited else item.credits  # an unlimited account pays nothing
                    await billing.reserve(self.store, account, credits, reservation_id, None, hold_s=hold)
                    job = replace(job, reservation_id=reservation_id, credits=credits)
                reserved.append((job, item.payload))
        except BaseException:
            with anyio.CancelScope(shield=True):
                for job, _ in reserved:
                    if job.reservation_id:
                        await self.store.refund(job.reservation())
            raise
        record = None
        if batch_id is not None:
            record = Batch(batch_id, account.id, [job.id for job, _ in reserved], at, request_id, webhook=hook)
        try:
            made = await self.engine.submit(reserved, record, idempotency)
        except BaseException:
            with anyio.CancelScope(shield=True):
                for job, _ in reserved:
                    if job.reservation_id:
                        await self.store.refund(job.reservation())
            raise
        if made.replayed:  # a concurrent submission under the same key won: ours is given back
            for job, _ in reserved:
                if job.reservation_id:
                    await self.store.refund(job.reservation())
        elif record is not None:
            await self._batch_progress(batch_id)  # every item refused at submission: completed already
        metrics.JOBS_SUBMITTED.inc(len(reserved))
        return made.kind, made.id, made.replayed

    # --- the runner ---

    def start(self) -> None:
        for _ in range(self.settings.job_workers):
            self._tasks.append(asyncio.create_task(self._run_forever()))
        self._tasks.append(asyncio.create_task(self._webhooks_forever()))
        self._tasks.append(asyncio.create_task(self._housekeeping_forever()))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    async def _wait_for_idle_gate(self) -> None:
        # Synchronous requests first: a job starts only once none has been processed for job_idle_s.
        while (quiet := self.gate.quiet_for()) < self.settings.job_idle_s:
            await asyncio.sleep(max(IDLE_POLL_S, self.settings.job_idle_s - quiet))

    async def _run_forever(self) -> None:
        while True:
            try:
                await self._wait_for_idle_gate()
                claimed = await self.engine.claim(self.worker, self.settings.job_lease_s, wait_s=1.0)
                if claimed is not None:
                    await self._run_claimed(claimed)
            except asyncio.CancelledError:
                raise
            except StoreUnavailable:
                await asyncio.sleep(1.0)  # Redis down: the claim (or the job) waits for it
            except Exception:
                log.exception("job runner")
                await asyncio.sleep(1.0)

    async def _heartbeat(self, job_id: str) -> None:
        while True:
            await asyncio.sleep(self.settings.job_lease_s / 3)
            with contextlib.suppress(StoreUnavailable):
                if not await self.engine.heartbeat(job_id, self.worker, self.settings.job_lease_s):
                    log.warning("job %s was taken over by another worker", job_id)
                    return

    async def _run_claimed(self, claimed: Claimed) -> None:
        job = claimed.job
        if now() > job.deadline:
            await self._settle(job, "expired", expect=("running",))
            return
        beat = asyncio.create_task(self._heartbeat(job.id))
        try:
            outcome = await self._render(job, claimed.payload)
        except (Busy, Cancelled):
            # No worker free, or preempted by a synchronous request: back in the queue, nothing spent.
            await self.engine.requeue(replace(job, status="queued"), self.worker)
            return
        finally:
            beat.cancel()
        if isinstance(outcome, ApiError):
            await self._settle(job, "failed", error=error_object(outcome, job.request_id), expect=("running",))
            return
        body, media_type, charged = outcome
        await self.engine.put_result(job.id, body, self.settings.job_ttl_s)
        # Charged once however often the job ran: commit is idempotent per reservation. model=auto
        # reserved the larger price and is charged what ran (the rest given back in the same step).
        await self.store.commit(job.reservation(), amount=None if charged == job.credits else charged)
        done = replace(
            job,
            status="succeeded",
            finished_at=now(),
            media_type=media_type,
            result_bytes=len(body),
            charged=True,
            credits=charged,
        )
        await self._finish(done, expect=("running",))
        metrics.JOB_SECONDS.observe(done.finished_at - job.created_at)  # type: ignore[operator]
        metrics.CREDITS_CHARGED.labels(job.model).inc(job.credits)

    async def _render(self, job: Job, payload: Payload) -> tuple[bytes, str, int] | ApiError:
        """The job's result as the synchronous route would answer it (body, media type, credits charged),
        or the ApiError it would answer."""
        settings = self.settings
        sub = payload.submission()
        try:
            if payload.image is None and payload.image_url is None:
                raise ApiError("internal_error", "The job's input was lost; its credits were refunded.")
            pipeline, then = planning.choose_model(sub, settings, self.registry)
            # The synchronous route's own steps: order (options, price), the photo (image_url fetched now),
            # its header checked, render in a worker, the answer.
            asked = await planning.order(sub, pipeline, job.output, _accept(payload.accept_json), settings, then=then)
            photo = sub.image if sub.image is not None else await planning.fetch_photo(sub, settings)
            planned = await planning.job(asked, photo, settings)
            work = functools.partial(render, planned, settings.png_compress_level, settings.png_fast)
            result = await self.gate.run(
                work,
                timeout=settings.processing_timeout_s,
                memory_bytes=planned.memory_bytes,
                background=True,
                preemptible=job.runs <= MAX_PREEMPTIONS,
            )
            metrics.observe_delivery(asked.model, job.output, result.inference_s, 0)
            bill = Bill(job.reservation(), job.credits)
            bill.settle_for(asked.price_of(bool(result.escalated)))
            response = await respond.response(asked, result, bill)
            return bytes(response.body), response.media_type or "application/octet-stream", bill.amount
        except ApiError as err:
            return err
        except Expired:
            return ApiError("processing_timeout", "Processing took too long and was abandoned; nothing was charged.")
        except (Busy, Cancelled, StoreUnavailable):
            raise
        except Exception:
            log.exception("job %s failed", job.id)
            return ApiError("internal_error", "The job failed on our side; its credits were refunded.")

    # --- settlement ---

    async def _settle(
        self, job: Job, status: str, *, expect: tuple[str, ...], error: dict[str, str] | None = None
    ) -> bool:
        """End an unrun or failed job: refunded, then recorded. False when its status was no longer expected."""
        ended = replace(job, status=status, finished_at=now(), error=error)  # type: ignore[arg-type]
        if not await self._finish(ended, expect=expect):
            return False
        if job.reservation_id:
            await self.store.refund(job.reservation())
        return True

    async def _finish(self, job: Job, *, expect: tuple[str, ...]) -> bool:
        if not await self.engine.update(job, expect):
            return False
        await self.engine.release(job.id, self.worker)
        metrics.JOBS_FINISHED.labels(job.status).inc()
        if job.webhook is not None:
            await self.engine.schedule_webhook(f"job:{job.id}", now())
        if job.batch_id is not None:
            await self._batch_progress(job.batch_id)
        return True

    async def _batch_progress(self, batch_id: str | None) -> None:
        if batch_id is None:
            return
        batch = await self.engine.get_batch(batch_id)
        if batch is None or batch.completed_at is not None:
            return
        jobs = await self.engine.get_many(batch.job_ids)
        if all(job.terminal for job in jobs):
            await self.engine.put_batch(replace(batch, completed_at=now()))
            if batch.webhook is not None:
                await self.engine.schedule_webhook(f"batch:{batch.id}", now())

    async def cancel(self, job: Job) -> bool:
        """Cancel a queued job (refunded); False when it has started or ended."""
        return await self._settle(job, "cancelled", expect=("queued",))

    # --- webhooks ---

    async def _webhooks_forever(self) -> None:
        while True:
            try:
                lease = self.settings.webhook_timeout_s * 2 + 5
                for target in await self.engine.due_webhooks(now(), lease):
                    await self._send(target)
            except asyncio.CancelledError:
                raise
            except StoreUnavailable:
                pass
            except Exception:
                log.exception("webhook sender")
            await asyncio.sleep(WEBHOOK_POLL_S)

    async def event(self, target: str) -> tuple[str, Webhook | None, dict[str, Any], Job | Batch | None]:
        kind, _, ref = target.partition(":")
        if kind == "job":
            job = await self.engine.get(ref)
            if job is None:
                return "", None, {}, None
            return job.account_id, job.webhook, {"type": f"job.{job.status}", "data": job.public()}, job
        batch = await self.engine.get_batch(ref)
        if batch is None:
            return "", None, {}, None
        jobs = await self.engine.get_many(batch.job_ids)
        return batch.account_id, batch.webhook, {"type": "batch.completed", "data": batch.public(jobs)}, batch

    async def _send(self, target: str) -> None:
        account_id, hook, payload, record = await self.event(target)
        if hook is None or record is None or hook.state != "pending":
            await self.engine.drop_webhook(target)
            return
        payload["timestamp"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        msg_id = f"msg_{target.replace(':', '_')}"
        attempt = await webhooks.deliver(hook.url, await self.secret(account_id), msg_id, payload, self.settings)
        first = hook.first_due_at or attempt["at"]
        metrics.WEBHOOK_ATTEMPTS.labels("delivered" if attempt["error"] is None else "failed").inc()
        if attempt["error"] is None:
            state = "delivered"
        elif now() - first + webhooks.next_delay(hook.attempt_count + 1, self.settings) > self.settings.webhook_retry_s:
            state = "failed"
            metrics.WEBHOOK_FAILURES.inc()
        else:
            state = "pending"
        updated = replace(hook.with_attempt(attempt, state), first_due_at=first)  # type: ignore[arg-type]
        if isinstance(record, Job):
            await self.engine.update(replace(record, webhook=updated), expect=(record.status,))
        else:
            await self.engine.put_batch(replace(record, webhook=updated))
        if state == "pending":
            await self.engine.schedule_webhook(
                target, now() + webhooks.next_delay(updated.attempt_count, self.settings)
            )
        else:
            await self.engine.drop_webhook(target)

    # --- housekeeping ---

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
            await self._settle(job, "expired", expect=("queued",))
        await self.engine.purge(now(), self.settings.job_ttl_s)
        metrics.JOBS_QUEUED.set(await self.engine.queue_depth())
