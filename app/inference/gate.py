"""The worker gate: bounded concurrency plus a bounded queue, as imgproxy's workers.

Inference never runs on the event loop. At most `workers` jobs run at once in
a thread pool; up to `queue_size` more wait. Past that, `run` raises Busy at
once so the client gets a 503 instead of an ever-growing wait. A job still
queued when its deadline passes is dropped without running.

A job nobody waits for any more stops costing CPU: when the caller is cancelled (the client
hung up) or its deadline passes, a queued job is dropped and a running one is cancelled at its
next checkpoint or inside the engine (app.inference.cancel).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from app.inference.cancel import Cancelled, CancelToken, running
from app.inference.memory import MemoryBudget, MemoryBusy

T = TypeVar("T")


class Busy(Exception):
    pass


class Expired(Exception):
    """The job's deadline passed (while queued or running)."""


class WorkerGate:
    def __init__(self, workers: int, queue_size: int, memory: MemoryBudget | None = None) -> None:
        self.workers = workers
        # Admission by memory (None: by count only): a job's estimated peak is held until its thread ends.
        self.memory = memory
        self.capacity = workers + queue_size
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="infer")
        # Counts jobs until their thread really finishes, not until the caller stops
        # waiting: a timed-out job still occupies a worker.
        self._in_flight = 0
        # Synchronous requests keep priority over asynchronous jobs (app/jobs/): a background job
        # starts only after none has been in flight for a while (job_idle_s), and a preemptible one is
        # stopped (Cancelled, its network run interrupted) when one arrives; it runs again later.
        self.foreground = 0
        self.foreground_ended = 0.0  # time.monotonic() when the last one ended
        self._preemptible: set[CancelToken] = set()

    @property
    def in_flight(self) -> int:
        return self._in_flight

    def quiet_for(self) -> float:
        """Seconds since the last foreground job ended; 0 while one is in flight."""
        return 0.0 if self.foreground else time.monotonic() - self.foreground_ended

    def _release(self, memory_taken: int, token: CancelToken) -> None:
        self._in_flight -= 1
        self._preemptible.discard(token)
        if self.memory is not None:
            self.memory.release(memory_taken)

    async def run(
        self,
        fn: Callable[..., T],
        *args: object,
        timeout: float,
        memory_bytes: int = 0,
        background: bool = False,
        preemptible: bool = False,
    ) -> T:
        """fn(*args) in a worker. Busy: no queue place, or no room in the memory budget in time.

        background: an asynchronous job's; preemptible too: Cancelled when a foreground job arrives."""
        if self._in_flight >= self.capacity:
            raise Busy()
        if preemptible and self.foreground:
            raise Cancelled()  # a synchronous request came first: the job waits
        if not background:
            for preempted in list(self._preemptible):
                preempted.cancel()
            self.foreground += 1
        try:
            return await self._run(fn, *args, timeout=timeout, memory_bytes=memory_bytes, preemptible=preemptible)
        finally:
            if not background:
                self.foreground -= 1
                self.foreground_ended = time.monotonic()

    async def _run(
        self, fn: Callable[..., T], *args: object, timeout: float, memory_bytes: int, preemptible: bool
    ) -> T:
        self._in_flight += 1  # a job waiting for memory holds a queue place
        taken = 0
        try:
            if self.memory is not None:
                taken = await self.memory.acquire(memory_bytes)
        except MemoryBusy:
            self._in_flight -= 1
            raise Busy() from None
        except BaseException:
            self._in_flight -= 1
            raise
        deadline = time.monotonic() + timeout
        token = CancelToken()
        if preemptible:
            self._preemptible.add(token)

        def job() -> T:
            if time.monotonic() > deadline:
                raise Expired()
            with running(token):
                return fn(*args)

        loop = asyncio.get_running_loop()
        submitted = self._pool.submit(job)
        # Done callbacks run in the worker thread (or here, for a job dropped while queued).
        submitted.add_done_callback(lambda _: loop.call_soon_threadsafe(self._release, taken, token))
        waiter = asyncio.wrap_future(submitted)
        # Read here when nobody awaits it any more (a cancelled job's error), so asyncio logs nothing.
        waiter.add_done_callback(lambda f: f.cancelled() or f.exception())
        try:
            return await asyncio.wait_for(asyncio.shield(waiter), timeout)
        except TimeoutError:
            raise Expired() from None
        finally:
            if not submitted.done():
                # Nobody will read the result: drop the job if it is still queued, else stop it.
                submitted.cancel()
                token.cancel()

    @contextlib.asynccontextmanager
    async def admitted(self, memory_bytes: int) -> AsyncIterator[None]:
        """Work done outside the workers (a header check in a thread) held within the memory budget.
        Busy when there is no room in time."""
        if self.memory is None:
            yield
            return
        try:
            taken = await self.memory.acquire(memory_bytes)
        except MemoryBusy:
            raise Busy() from None
        try:
            yield
        finally:
            self.memory.release(taken)

    def shutdown(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
