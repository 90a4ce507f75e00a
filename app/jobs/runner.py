"""The job runner: claims a job when no synchronous request is in the worker gate, runs it with
the synchronous route's own planning and rendering as a preemptible background job, stores the
result and charges it; a synchronous request arriving stops it and it is queued again.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from dataclasses import replace

from app.accounts.billing import Bill
from app.errors import ApiError, processing_timeout
from app.http import metrics
from app.inference.cancel import Cancelled
from app.inference.gate import Busy, Expired, WorkerGate
from app.inference.registry import ModelRegistry
from app.jobs.engine import Claimed, JobEngine
from app.jobs.model import Job, Payload, now
from app.jobs.settle import Settlement, error_object
from app.removal import job as planning
from app.removal import respond
from app.removal.render import render
from app.settings import Settings
from app.store import Store, StoreUnavailable

log = logging.getLogger("cutout.jobs")

# A job preempted this many times runs to its end even if a synchronous request arrives (no starvation).
MAX_PREEMPTIONS = 3
IDLE_POLL_S = 0.05


def accept(accept_json: bool) -> str:
    """The Accept header `plan` reads: a job stores only whether the answer is JSON."""
    return "application/json" if accept_json else ""


class Runner:
    def __init__(
        self,
        settings: Settings,
        engine: JobEngine,
        store: Store,
        registry: ModelRegistry,
        gate: WorkerGate,
        settlement: Settlement,
    ) -> None:
        self.settings = settings
        self.engine = engine
        self.store = store
        self.registry = registry
        self.gate = gate
        self.settlement = settlement
        self.worker = settlement.worker

    async def _wait_for_idle_gate(self) -> None:
        # Synchronous requests first: a job starts only once none has been processed for job_idle_s.
        while (quiet := self.gate.quiet_for()) < self.settings.job_idle_s:
            await asyncio.sleep(max(IDLE_POLL_S, self.settings.job_idle_s - quiet))

    async def run_forever(self) -> None:
        while True:
            try:
                await self._wait_for_idle_gate()
                claimed = await self.engine.claim(self.worker, self.settings.job_lease_s, wait_s=1.0)
                if claimed is not None:
                    await self.run_claimed(claimed)
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

    async def run_claimed(self, claimed: Claimed) -> None:
        job = claimed.job
        if now() > job.deadline:
            await self.settlement.settle(job, "expired", expect=("running",))
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
            error = error_object(outcome, job.request_id)
            await self.settlement.settle(job, "failed", error=error, expect=("running",))
            return
        await self._deliver(job, *outcome)

    async def _deliver(self, job: Job, body: bytes, media_type: str, charged: int) -> None:
        """The result stored, then charged, then the job recorded succeeded."""
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
        await self.settlement.finish(done, expect=("running",))
        metrics.JOB_SECONDS.observe(done.finished_at - job.created_at)  # type: ignore[operator]
        metrics.CREDITS_CHARGED.labels(job.model).inc(charged)  # what ran (model=auto: not the reserve)

    async def _render(self, job: Job, payload: Payload) -> tuple[bytes, str, int] | ApiError:
        """The job's result as the synchronous route would answer it (body, media type, credits charged),
        or the ApiError it would answer."""
        try:
            return await self._answer(job, payload)
        except ApiError as err:
            return err
        except Expired:
            return processing_timeout()
        except (Busy, Cancelled, StoreUnavailable):
            raise
        except Exception:
            log.exception("job %s failed", job.id)
            return ApiError("internal_error", "The job failed on our side; its credits were refunded.")

    async def _answer(self, job: Job, payload: Payload) -> tuple[bytes, str, int]:
        settings = self.settings
        sub = payload.submission()
        if payload.image is None and payload.image_url is None:
            raise ApiError("internal_error", "The job's input was lost; its credits were refunded.")
        pipeline, then = planning.choose_model(sub, settings, self.registry)
        # The synchronous route's own steps: order (options, price), the photo (image_url fetched now),
        # its header checked, render in a worker, the answer.
        asked = await planning.order(sub, pipeline, job.output, accept(payload.accept_json), settings, then=then)
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
