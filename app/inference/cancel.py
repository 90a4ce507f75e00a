"""Stopping a job whose result nobody will receive (the client hung up, or its deadline passed).

The gate gives each job a CancelToken and makes it the worker thread's current one while the
job runs. The pipeline calls `checkpoint()` between stages (and between strips of the long
ones); an engine registers a hook that interrupts a running inference (OpenVINO's
InferRequest.cancel(), onnxruntime's RunOptions.terminate). A thread-local keeps the token out
of every signature between the route and the engine.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator


class Cancelled(Exception):
    """The job was cancelled; raised in the worker at the next checkpoint or by the interrupted engine."""


class CancelToken:
    def __init__(self) -> None:
        self._cancelled = threading.Event()
        self._lock = threading.Lock()
        self._hooks: list[Callable[[], None]] = []

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()

    def cancel(self) -> None:
        # Hooks run under the lock (they only set a flag or call InferRequest.cancel(), which returns
        # at once): a hook removed after its block can never fire late, on an InferRequest that the
        # engine has since handed to another job's run.
        with self._lock:
            self._cancelled.set()
            for hook in self._hooks:
                hook()

    @contextlib.contextmanager
    def interrupts(self, hook: Callable[[], None]) -> Iterator[None]:
        """While the block runs, cancelling calls `hook`; a job already cancelled does not enter it
        (an interrupt before the run starts would be lost, and the whole inference wasted)."""
        with self._lock:
            if self._cancelled.is_set():
                raise Cancelled()
            self._hooks.append(hook)
        try:
            yield
        finally:
            with self._lock:
                self._hooks.remove(hook)


_local = threading.local()


def current() -> CancelToken | None:
    return getattr(_local, "token", None)


@contextlib.contextmanager
def running(token: CancelToken) -> Iterator[None]:
    """Make `token` this thread's current one for the duration of a job."""
    _local.token = token
    try:
        yield
    finally:
        _local.token = None


def checkpoint() -> None:
    """Raise Cancelled when the current job has been cancelled; free when it has not."""
    token = current()
    if token is not None and token.cancelled:
        raise Cancelled()


@contextlib.contextmanager
def interruptible(hook: Callable[[], None]) -> Iterator[None]:
    """For engines: `hook` interrupts the call in the block if the current job is cancelled."""
    token = current()
    if token is None:
        yield
        return
    try:
        with token.interrupts(hook):
            yield
    except Exception:
        if token.cancelled:  # the engine's own error for an interrupted run
            raise Cancelled() from None
        raise
    checkpoint()  # a run interrupted too late to stop still ends the job here
