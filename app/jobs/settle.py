"""How a job ends: its status written by compare-and-set, its credits refunded when it was not
delivered, its webhook scheduled, and its batch completed once its last item has ended.

Shared by the runner (succeeded, failed), cancellation and housekeeping (expired); a second
writer (a stalled replica, a cancel racing a claim) loses the compare-and-set and changes nothing.
"""

from __future__ import annotations

from dataclasses import replace

from app.errors import ApiError
from app.http import metrics
from app.jobs.engine import JobEngine
from app.jobs.model import Job, Status, now
from app.store import Store


def error_object(err: ApiError, request_id: str) -> dict[str, str]:
    return {"code": err.code, "message": err.message, "request_id": request_id}


class Settlement:
    def __init__(self, engine: JobEngine, store: Store, worker: str) -> None:
        self.engine = engine
        self.store = store
        self.worker = worker

    async def settle(
        self, job: Job, status: Status, *, expect: tuple[str, ...], error: dict[str, str] | None = None
    ) -> bool:
        """End an unrun or failed job: refunded, then recorded. False when its status was no longer expected."""
        ended = replace(job, status=status, finished_at=now(), error=error)
        if not await self.finish(ended, expect=expect):
            return False
        if job.reservation_id:
            await self.store.refund(job.reservation())
        return True

    async def finish(self, job: Job, *, expect: tuple[str, ...]) -> bool:
        if not await self.engine.update(job, expect):
            return False
        await self.engine.release(job.id, self.worker)
        metrics.JOBS_FINISHED.labels(job.status).inc()
        if job.webhook is not None:
            await self.engine.schedule_webhook(f"job:{job.id}", now())
        if job.batch_id is not None:
            await self.batch_progress(job.batch_id)
        return True

    async def batch_progress(self, batch_id: str) -> None:
        """The batch completed (and its webhook scheduled) once every item has ended."""
        batch = await self.engine.get_batch(batch_id)
        if batch is None or batch.completed_at is not None:
            return
        jobs = await self.engine.get_many(batch.job_ids)
        if all(job.terminal for job in jobs):
            # When its last item ended: the batch's retention ends with that item's, to the millisecond.
            completed_at = max((job.finished_at or 0.0 for job in jobs), default=0.0) or now()
            await self.engine.put_batch(replace(batch, completed_at=completed_at))
            if batch.webhook is not None:
                await self.engine.schedule_webhook(f"batch:{batch.id}", now())
