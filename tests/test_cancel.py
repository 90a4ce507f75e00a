"""The cancel token between the gate and the engines (app/inference/cancel.py), in process."""

from __future__ import annotations

import pytest

from app.inference.cancel import Cancelled, CancelToken, interruptible, running


def test_a_job_cancelled_before_its_inference_never_starts_it() -> None:
    token, started, interrupted = CancelToken(), [], []
    token.cancel()
    with running(token), pytest.raises(Cancelled), interruptible(lambda: interrupted.append(True)):
        started.append(True)  # the engine's start_async/run
    assert started == [] and interrupted == []


def test_cancelling_during_the_run_interrupts_it_and_ends_the_job() -> None:
    token, interrupted = CancelToken(), []
    with running(token), pytest.raises(Cancelled), interruptible(lambda: interrupted.append(True)):
        token.cancel()  # from the event loop, while the engine runs
    assert interrupted == [True]


def test_a_hook_is_never_called_after_its_run_ended() -> None:
    token, interrupted = CancelToken(), []
    with running(token), interruptible(lambda: interrupted.append(True)):
        pass
    token.cancel()  # the InferRequest may serve another job by now
    assert interrupted == []
