"""What a job and a batch are: the records the queue engines keep and the JSON clients read.

A job is one rembg request run later: its input (`Payload`), its reservation (credits held at
submission), its state, its result's media type once succeeded, its error once failed, and its
webhook's attempts. A batch is a list of jobs submitted together. The engines
(app/jobs/sqlite.py, app/jobs/redis.py) store these as JSON documents; only the status is
also kept apart, so that every state change is one compare-and-set on it.
"""

from __future__ import annotations

import base64
import json
import secrets
import time
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Literal

from app.accounts.pricing import Output
from app.removal.submission import Submission
from app.store import Reservation

Status = Literal["queued", "running", "succeeded", "failed", "cancelled", "expired"]
TERMINAL: frozenset[str] = frozenset({"succeeded", "failed", "cancelled", "expired"})
# Attempts recorded per webhook; later ones replace the oldest but the count goes on.
MAX_RECORDED_ATTEMPTS = 20


def new_job_id() -> str:
    return "job_" + secrets.token_hex(12)


def new_batch_id() -> str:
    return "batch_" + secrets.token_hex(12)


def now() -> float:
    return time.time()


@dataclass(frozen=True)
class Payload:
    """A job's input: the submission as read, to be planned and rendered when a worker runs it."""

    image: bytes | None
    image_url: str | None
    model: str | None
    fields: dict[str, Any]
    bg_image: bytes | None
    operating_resolution: str | None
    accept_json: bool
    bg_image_url: str | None = None  # remove.bg's: fetched when the job runs, like image_url

    @classmethod
    def of(cls, sub: Submission, accept_json: bool) -> Payload:
        return cls(
            image=sub.image,
            image_url=sub.image_url,
            model=sub.model,
            fields=dict(sub.fields),
            bg_image=sub.bg_image,
            operating_resolution=sub.operating_resolution,
            accept_json=accept_json,
            bg_image_url=sub.bg_image_url,
        )

    def submission(self) -> Submission:
        """The submission again, to plan and render it the synchronous route's way."""
        return Submission(
            image=self.image,
            image_url=self.image_url,
            model=self.model,
            fields=dict(self.fields),
            bg_image=self.bg_image,
            operating_resolution=self.operating_resolution,
            bg_image_url=self.bg_image_url,
        )

    def meta(self) -> str:
        return json.dumps(
            {
                "image_url": self.image_url,
                "bg_image_url": self.bg_image_url,
                "model": self.model,
                "fields": self.fields,
                "operating_resolution": self.operating_resolution,
                "accept_json": self.accept_json,
            }
        )

    @classmethod
    def from_parts(cls, meta: str, image: bytes | None, bg_image: bytes | None) -> Payload:
        m = json.loads(meta)
        return cls(
            image=image,
            image_url=m["image_url"],
            model=m["model"],
            fields=m["fields"],
            bg_image=bg_image,
            operating_resolution=m["operating_resolution"],
            accept_json=m["accept_json"],
            bg_image_url=m.get("bg_image_url"),  # absent from jobs queued before it existed
        )


@dataclass(frozen=True)
class Webhook:
    url: str
    state: Literal["pending", "delivered", "failed"] = "pending"
    attempts: list[dict[str, Any]] = field(default_factory=list)
    attempt_count: int = 0
    first_due_at: float | None = None  # when the first attempt was due: retries stop webhook_retry_s later

    def with_attempt(self, attempt: dict[str, Any], state: Literal["pending", "delivered", "failed"]) -> Webhook:
        kept = [*self.attempts, attempt][-MAX_RECORDED_ATTEMPTS:]
        return replace(self, attempts=kept, attempt_count=self.attempt_count + 1, state=state)


@dataclass(frozen=True)
class Job:
    id: str
    account_id: str
    output: Output
    model: str
    request_id: str
    reservation_id: str
    credits: int  # reserved at submission; charged once delivered, else refunded
    created_at: float
    deadline: float  # not run by then: expired and refunded
    status: Status = "queued"
    batch_id: str | None = None
    index: int = 0
    name: str | None = None  # a batch item's file name (its upload's, or the JSON item's "name")
    started_at: float | None = None
    finished_at: float | None = None
    runs: int = 0  # times a worker started it (a replica that died mid-job leaves it to another)
    media_type: str | None = None
    result_bytes: int | None = None
    error: dict[str, str] | None = None
    charged: bool = False
    webhook: Webhook | None = None

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL

    def reservation(self) -> Reservation:
        return Reservation(self.reservation_id, self.account_id, self.credits, 0)

    def dumps(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def loads(cls, text: str) -> Job:
        data = json.loads(text)
        hook = data.pop("webhook")
        return cls(**data, webhook=Webhook(**hook) if hook else None)

    def public(self, position: int | None = None) -> dict[str, Any]:
        """The job as GET /v2/jobs/{id} shows it."""
        body: dict[str, Any] = {
            "id": self.id,
            "object": "job",
            "status": self.status,
            "url": f"/v2/jobs/{self.id}",
            "output": self.output,
            "model": self.model,
            "credits": self.credits,
            "credits_charged": self.credits if self.charged else 0,
            "created_at": self.created_at,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "expires_at": self.deadline,
            "batch_id": self.batch_id,
            "runs": self.runs,
        }
        if self.batch_id is not None:
            body["index"] = self.index
            body["name"] = self.name
        if self.status == "queued" and position is not None:
            body["position"] = position
        if self.status == "succeeded":
            body["result_url"] = f"/v2/jobs/{self.id}/result"
            body["content_type"] = self.media_type
            body["file_size"] = self.result_bytes
        if self.error is not None:
            body["error"] = self.error
        if self.webhook is not None:
            body["webhook"] = webhook_public(self.webhook)
        return body


def webhook_public(hook: Webhook) -> dict[str, Any]:
    return {"url": hook.url, "state": hook.state, "attempt_count": hook.attempt_count, "attempts": hook.attempts}


@dataclass(frozen=True)
class Batch:
    id: str
    account_id: str
    job_ids: list[str]
    created_at: float
    request_id: str
    webhook: Webhook | None = None
    completed_at: float | None = None

    def dumps(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def loads(cls, text: str) -> Batch:
        data = json.loads(text)
        hook = data.pop("webhook")
        return cls(**data, webhook=Webhook(**hook) if hook else None)

    def public(self, jobs: list[Job]) -> dict[str, Any]:
        counts = {status: 0 for status in ("queued", "running", "succeeded", "failed", "cancelled", "expired")}
        for job in jobs:
            counts[job.status] += 1
        done = all(job.terminal for job in jobs)
        status = "completed" if done else ("queued" if counts["queued"] == len(jobs) else "running")
        body: dict[str, Any] = {
            "id": self.id,
            "object": "batch",
            "status": status,
            "url": f"/v2/batches/{self.id}",
            "created_at": self.created_at,
            # Read from the items when the runner has not recorded it yet (it does so just after the last one).
            "completed_at": self.completed_at or (max(job.finished_at or 0 for job in jobs) if done else None),
            "counts": counts,
            "credits": sum(job.credits for job in jobs),
            "credits_charged": sum(job.credits for job in jobs if job.charged),
            "items": [job.public() for job in jobs],
        }
        if done:
            body["zip_url"] = f"/v2/batches/{self.id}/zip"
        if self.webhook is not None:
            body["webhook"] = webhook_public(self.webhook)
        return body


def webhook_secret(master: bytes, account_id: str) -> str:
    """The account's Standard Webhooks secret, `whsec_` + base64 of 32 bytes derived from the
    engine's master key: one stored secret for every account, none in the accounts store."""
    import hashlib
    import hmac

    key = hmac.new(master, f"webhook-secret\n{account_id}".encode(), hashlib.sha256).digest()
    return "whsec_" + base64.b64encode(key).decode("ascii")
