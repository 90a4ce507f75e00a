"""Admission before a job reaches the worker gate: how many jobs one account may have at once.

Counted per process, as the workers are: with several replicas each one bounds its own workers.
"""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import Iterator

from app.errors import ApiError
from app.settings import Settings
from app.store import Account

RETRY_AFTER_S = 1


class AccountSlots:
    """At most the plan's `max_concurrent` jobs per account; one more is a 429 at once (no queue:
    a client that fans out should see it, not wait behind itself)."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._held: Counter[str] = Counter()

    def limit_for(self, account: Account) -> int:
        return self._settings.plan_for(account.plan).max_concurrent

    @contextlib.contextmanager
    def hold(self, account: Account) -> Iterator[None]:
        limit = self.limit_for(account)
        if self._held[account.id] >= limit:
            raise ApiError(
                "concurrency_limit_exceeded",
                f"This account already has {limit} request(s) being processed, the most its plan allows "
                f"at once; send the next one when one of them has finished.",
                retry_after_s=RETRY_AFTER_S,
                extra={"retry_after": RETRY_AFTER_S},
            )
        self._held[account.id] += 1
        try:
            yield
        finally:
            self._held[account.id] -= 1
            if not self._held[account.id]:
                del self._held[account.id]
