"""The webhook sender: due deliveries (a job's or a batch's end), signed with the account's
Standard Webhooks secret, each attempt recorded on the job or batch, retried with exponential
backoff until a 2xx or until `webhook_retry_s` has passed since the first attempt was due.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, replace
from typing import Any, Literal

from app.http import metrics
from app.jobs import webhooks
from app.jobs.engine import JobEngine
from app.jobs.model import Batch, Job, Webhook, now, webhook_secret
from app.settings import Settings
from app.store import StoreUnavailable

log = logging.getLogger("cutout.jobs")

WEBHOOK_POLL_S = 0.5


@dataclass(frozen=True)
class Event:
    """What one due target ("job:{id}" / "batch:{id}") is about: whose, its webhook, the body."""

    account_id: str
    hook: Webhook
    payload: dict[str, Any]
    record: Job | Batch


class WebhookSender:
    def __init__(self, settings: Settings, engine: JobEngine) -> None:
        self.settings = settings
        self.engine = engine
        self._master: bytes | None = None

    async def secret(self, account_id: str) -> str:
        if self._master is None:
            self._master = await self.engine.master_key()
        return webhook_secret(self._master, account_id)

    async def run_forever(self) -> None:
        while True:
            try:
                lease = self.settings.webhook_timeout_s * 2 + 5
                for target in await self.engine.due_webhooks(now(), lease):
                    await self.send(target)
            except asyncio.CancelledError:
                raise
            except StoreUnavailable:
                pass
            except Exception:
                log.exception("webhook sender")
            await asyncio.sleep(WEBHOOK_POLL_S)

    async def event(self, target: str) -> Event | None:
        kind, _, ref = target.partition(":")
        if kind == "job":
            job = await self.engine.get(ref)
            if job is None or job.webhook is None:
                return None
            return Event(job.account_id, job.webhook, {"type": f"job.{job.status}", "data": job.public()}, job)
        batch = await self.engine.get_batch(ref)
        if batch is None or batch.webhook is None:
            return None
        jobs = await self.engine.get_many(batch.job_ids)
        return Event(batch.account_id, batch.webhook, {"type": "batch.completed", "data": batch.public(jobs)}, batch)

    async def send(self, target: str) -> None:
        """One attempt for the target, recorded; the next one scheduled unless delivered or given up."""
        event = await self.event(target)
        if event is None or event.hook.state != "pending":
            await self.engine.drop_webhook(target)
            return
        payload = {**event.payload, "timestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        msg_id = f"msg_{target.replace(':', '_')}"
        secret = await self.secret(event.account_id)
        attempt = await webhooks.deliver(event.hook.url, secret, msg_id, payload, self.settings)
        metrics.WEBHOOK_ATTEMPTS.labels("delivered" if attempt["error"] is None else "failed").inc()
        first = event.hook.first_due_at or attempt["at"]
        state = self._state_after(attempt, first, event.hook.attempt_count + 1)
        updated = replace(event.hook.with_attempt(attempt, state), first_due_at=first)
        await self._record(event.record, updated)
        if state == "pending":
            await self.engine.schedule_webhook(
                target, now() + webhooks.next_delay(updated.attempt_count, self.settings)
            )
        else:
            await self.engine.drop_webhook(target)

    def _state_after(
        self, attempt: dict[str, Any], first_due_at: float, attempts: int
    ) -> Literal["pending", "delivered", "failed"]:
        """Delivered on a 2xx; failed once the next retry would fall past webhook_retry_s; else pending."""
        if attempt["error"] is None:
            return "delivered"
        if now() - first_due_at + webhooks.next_delay(attempts, self.settings) > self.settings.webhook_retry_s:
            metrics.WEBHOOK_FAILURES.inc()
            return "failed"
        return "pending"

    async def _record(self, record: Job | Batch, hook: Webhook) -> None:
        if isinstance(record, Job):
            await self.engine.update(replace(record, webhook=hook), expect=(record.status,))
        else:
            await self.engine.put_batch(replace(record, webhook=hook))
