"""INT8's recheck networks, loaded on demand (app/inference/recheck.py): one at a time, released
when idle, counted by the memory admission while loaded. Real OpenVINO engines of U2-Netp at two
sides stand in for the native IS-Net networks: small and fast, and present in every checkout (the
shipped ones, where the INT8 networks were made: tests/test_int8.py)."""

from __future__ import annotations

import functools
import threading
import time

import numpy as np

from app.http.unsent import UNSENT
from app.inference.engine import create_engine
from app.inference.recheck import OnDemandEngine, RecheckSlot
from app.inference.registry import ModelRegistry
from app.main import _memory_budget
from app.settings import Settings
from harness import MODELS_DIR

SETTINGS = Settings(models_dir=MODELS_DIR)


def _engines(slot: RecheckSlot) -> dict[int, OnDemandEngine]:
    made = {}
    for side in (320, 256):
        load = functools.partial(create_engine, SETTINGS, "u2netp", side)
        made[side] = OnDemandEngine(f"u2netp at {side}", load, slot, "openvino")
        made[side].warm()
    return made


def _batch(side: int) -> np.ndarray:
    return np.random.default_rng(side).random((1, 3, side, side), np.float32)


def test_a_recheck_network_is_loaded_when_a_run_needs_it_and_gives_its_answer() -> None:
    slot = RecheckSlot(idle_s=60.0)
    engines = _engines(slot)
    assert slot.loaded is None and slot.resident_bytes == 0  # warmed at start-up, then released
    assert slot.loads == 0
    out = engines[320].run(_batch(320))
    assert slot.loaded == "u2netp at 320" and slot.loads == 1
    assert slot.resident_bytes > 0
    np.testing.assert_array_equal(out, create_engine(SETTINGS, "u2netp", 320).run(_batch(320)))
    engines[320].run(_batch(320))
    assert slot.loads == 1  # still loaded: not loaded again


def test_one_is_loaded_at_a_time() -> None:
    slot = RecheckSlot(idle_s=60.0)
    engines = _engines(slot)
    engines[320].run(_batch(320))
    engines[256].run(_batch(256))
    assert slot.loaded == "u2netp at 256" and slot.loads == 2


def test_a_run_waits_for_the_loaded_network_to_finish_before_it_is_swapped() -> None:
    slot = RecheckSlot(idle_s=60.0)
    engines = _engines(slot)
    done = threading.Event()
    with slot.engine(engines[320].key, engines[320]._load):
        other = threading.Thread(target=lambda: (engines[256].run(_batch(256)), done.set()))
        other.start()
        assert not done.wait(0.5)  # the 320 network is in use: not swapped under it
        assert slot.loaded == "u2netp at 320"
    assert done.wait(30.0)
    other.join()
    assert slot.loaded == "u2netp at 256"


def test_it_is_released_after_idle_s_without_a_run() -> None:
    slot = RecheckSlot(idle_s=0.3)
    engines = _engines(slot)
    engines[320].run(_batch(320))
    assert slot.loaded == "u2netp at 320"
    deadline = time.monotonic() + 10.0
    while slot.loaded is not None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert slot.loaded is None and slot.resident_bytes == 0


def test_the_memory_admission_counts_it_while_it_is_loaded() -> None:
    slot = RecheckSlot(idle_s=60.0)
    engines = _engines(slot)
    budget = _memory_budget(SETTINGS, ModelRegistry({}, slot))
    assert budget is not None
    assert budget.outside() == UNSENT.bytes
    engines[320].run(_batch(320))
    assert slot.resident_bytes > 0
    assert budget.outside() == UNSENT.bytes + slot.resident_bytes
