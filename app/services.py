"""What the routes need at run time, built once by the app's lifespan."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from starlette.requests import Request

from app.accounts.admission import AccountSlots
from app.accounts.limits import RateLimits
from app.inference.gate import WorkerGate
from app.inference.registry import ModelRegistry
from app.settings import Settings
from app.store import Store

if TYPE_CHECKING:
    from app.jobs.service import JobService


@dataclass
class Services:
    settings: Settings
    store: Store
    registry: ModelRegistry
    gate: WorkerGate
    limits: RateLimits
    slots: AccountSlots
    jobs: JobService | None = None  # asynchronous jobs and batches (app/jobs/)


def services(request: Request) -> Services:
    svc: Services = request.app.state.services
    return svc
