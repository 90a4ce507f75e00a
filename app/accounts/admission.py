"""Admission before a job reaches the worker gate: how many jobs one account may run at once,
and how many more may wait for their turn.

Each account has its own line: at most the plan's `max_concurrent` of its requests run (fetch
an image_url, or sit in the worker gate) at once; up to `max_queued` more wait, first come first
served, and only a request past that gets 429 at once. An account's waiting requests never
enter the global worker queue, so one account's burst delays another account's request by at
most the jobs the first account is allowed to run (one, on the default plan), not by its backlog.

A request's body is read only in its turn (see app/routes/rembg.py), so a waiting request holds a
connection and no body: one account holds at most `max_concurrent` bodies at once (issue 21).
Because a waiting request's Idempotency-Key is known before its body, a second request under a key
that is already in line answers 409 at once instead of queueing behind its twin.

Counted per process, as the workers are: with several replicas each one bounds its own workers
(and the store's claim answers the 409 across replicas).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field

from app.errors import ApiError, idempotency_key_in_use
from app.settings import Settings
from app.store import Account

RETRY_AFTER_S = 1


@dataclass
class _Line:
    """One account's requests: those admitted (running or waiting) and the waiters, oldest first."""

    admitted: int = 0
    running: int = 0
    keys: set[str] = field(default_factory=set)  # the Idempotency-Keys of its admitted requests
    waiters: deque[asyncio.Future[None]] = field(default_factory=deque)


class AccountSlots:
    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._lines: dict[str, _Line] = {}

    def limit_for(self, account: Account) -> int:
        return self._settings.plan_for(account.plan).max_concurrent

    def queue_for(self, account: Account) -> int:
        return self._settings.plan_for(account.plan).max_queued

    def _line(self, account: Account) -> _Line:
        return self._lines.setdefault(account.id, _Line())

    def _forget_if_idle(self, account: Account) -> None:
        line = self._lines.get(account.id)
        if line is not None and not line.admitted and not line.running and not line.waiters:
            del self._lines[account.id]

    @contextlib.contextmanager
    def admit(self, account: Account, idempotency_key: str | None = None) -> Iterator[None]:
        """A place in the account's line (running or waiting) for the whole request; 429 when the
        plan's `max_concurrent` + `max_queued` are all taken, 409 when a request under the same
        Idempotency-Key already has one."""
        limit, queued = self.limit_for(account), self.queue_for(account)
        line = self._line(account)
        if idempotency_key is not None and idempotency_key in line.keys:
            raise idempotency_key_in_use()
        if line.admitted >= limit + queued:
            self._forget_if_idle(account)
            raise ApiError(
                "concurrency_limit_exceeded",
                f"This account already has {line.admitted} request(s) in progress: {limit} processed at once and "
                f"{queued} waiting, the most its plan allows; send the next one when one of them has finished.",
                retry_after_s=RETRY_AFTER_S,
                extra={"retry_after": RETRY_AFTER_S},
            )
        line.admitted += 1
        if idempotency_key is not None:
            line.keys.add(idempotency_key)
        try:
            yield
        finally:
            line.admitted -= 1
            line.keys.discard(idempotency_key or "")
            self._forget_if_idle(account)

    async def acquire(self, account: Account, timeout: float | None = None) -> None:
        """One of the account's running slots, waiting in turn for it (inside `admit`); TimeoutError
        when none came in `timeout` s. A waiter that is cancelled (its client hung up) or times out
        leaves the line without taking a slot. Give it back with `release`."""
        line = self._line(account)
        if line.running < self.limit_for(account) and not line.waiters:
            line.running += 1
            return
        waiter = asyncio.get_running_loop().create_future()
        line.waiters.append(waiter)
        try:
            await asyncio.wait_for(waiter, timeout)  # resolved by a release, which hands its slot over
        except BaseException:
            if waiter.done() and not waiter.cancelled():
                self.release(account)  # handed a slot just as it was cancelled: pass it on
            else:
                line.waiters.remove(waiter)
                self._forget_if_idle(account)
            raise

    def release(self, account: Account) -> None:
        line = self._lines[account.id]
        while line.waiters:
            waiter = line.waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)  # the slot passes to the oldest waiter (running stays counted)
                return
        line.running -= 1
        self._forget_if_idle(account)

    @contextlib.asynccontextmanager
    async def hold(self, account: Account, timeout: float | None = None) -> AsyncIterator[None]:
        """`acquire` ... `release` around a block."""
        await self.acquire(account, timeout)
        try:
            yield
        finally:
            self.release(account)
