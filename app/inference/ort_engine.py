"""The onnxruntime engine: execution providers (CUDA with CPU fallback), session options, the bound on concurrent runs.

The runtime for GPUs (the [gpu] extra) and the fallback on a CPU where OpenVINO is not installed.
"""

from __future__ import annotations

import functools
import logging
import threading
from typing import Literal

import numpy as np
import onnxruntime as ort

from app.inference.cancel import interruptible
from app.settings import Settings

log = logging.getLogger("cutout.inference")


def _providers(wanted: list[str]) -> list[str]:
    """Configured providers that this onnxruntime build has, CPU always last as the fallback."""
    available = set(ort.get_available_providers())
    chosen = [p for p in wanted if p in available and p != "CPUExecutionProvider"]
    skipped = [p for p in wanted if p not in available]
    if skipped:
        log.warning("execution providers not available, skipped: %s", ", ".join(skipped))
    return [*chosen, "CPUExecutionProvider"]


@functools.cache
def _share_cpu_arena() -> None:
    """One CPU memory arena for every session in the process (sessions opt in with use_env_allocators).

    An engine's two sessions then hold at most one set of activations per run in flight,
    instead of each keeping its own arena at its own peak.
    """
    cpu = ort.OrtMemoryInfo("Cpu", ort.OrtAllocatorType.ORT_ARENA_ALLOCATOR, 0, ort.OrtMemType.DEFAULT)
    ort.create_and_register_allocator(cpu, ort.OrtArenaCfg(0, -1, -1, -1))  # -1: onnxruntime's defaults


def create_session(settings: Settings, weights_name: str, intra_op_threads: int) -> ort.InferenceSession:
    _share_cpu_arena()
    options = ort.SessionOptions()
    # ENABLE_ALL adds the NCHWc layout transforms: the fastest CPU kernels for these convolutions.
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = intra_op_threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.add_session_config_entry("session.use_env_allocators", "1")
    # Idle intra-op threads sleep instead of spinning: a spinning thread steals the core that
    # another request's decode or PNG encode needs (measured: faster under load, not slower alone).
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    # The memory pattern pre-plans one block for a whole run; without it a u2netp run peaks
    # ~200 MB lower at the same speed (the arena still reuses buffers between runs).
    options.enable_mem_pattern = False
    providers = _providers(settings.providers)
    session = ort.InferenceSession(str(settings.weights_path(weights_name)), options, providers=providers)
    fell_back = [p for p in providers if p not in session.get_providers()]
    if fell_back:
        # onnxruntime-gpu lists CUDA even when the CUDA/cuDNN libraries are missing, then quietly runs on CPU.
        log.warning("%s: providers %s failed to load; running on %s", weights_name, fell_back, session.get_providers())
    return session


class OnnxRuntimeEngine:
    """The onnxruntime sessions of one weights file plus the bound on how many inferences run at once.

    A lone inference runs on the wide session (`intra_op_threads`, every core by default): lowest
    latency. When another is already running, it takes the narrow one-thread session: two
    single-thread runs keep two cores busy with no thread hand-offs, measured less CPU per image
    than two runs sharing one wide pool. Each run in flight holds its own activations (a lot for
    u2netp: docs/performance.md), hence the bound.
    """

    runtime: Literal["onnxruntime"] = "onnxruntime"

    def __init__(
        self, wide: ort.InferenceSession, narrow: ort.InferenceSession | None, concurrent_inferences: int
    ) -> None:
        self._wide = wide
        self._narrow = narrow or wide
        self._input = wide.get_inputs()[0].name
        self._output = wide.get_outputs()[0].name
        height = wide.get_inputs()[0].shape[2]
        # The exported input side, or None where the network takes any size.
        self.input_side: int | None = height if isinstance(height, int) else None
        self._slots = threading.BoundedSemaphore(concurrent_inferences)
        self._lock = threading.Lock()
        self._running = 0

    @classmethod
    def create(cls, settings: Settings, weights_name: str) -> OnnxRuntimeEngine:
        wide = create_session(settings, weights_name, settings.intra_op_threads)
        on_cpu = wide.get_providers()[0] == "CPUExecutionProvider"
        wants_narrow = on_cpu and settings.concurrent_inferences > 1 and settings.intra_op_threads != 1
        narrow = create_session(settings, weights_name, 1) if wants_narrow else None
        return cls(wide, narrow, settings.concurrent_inferences)

    def run(self, batch: np.ndarray) -> np.ndarray:
        """The first output for an N x C x H x W float32 batch."""
        with self._slots:
            with self._lock:
                session = self._wide if self._running == 0 else self._narrow
                self._running += 1
            options = ort.RunOptions()
            try:
                # A cancelled job (client gone) sets the terminate flag: the run stops between kernels.
                with interruptible(lambda: setattr(options, "terminate", True)):
                    out: np.ndarray = session.run([self._output], {self._input: batch}, options)[0]
                    return out
            finally:
                with self._lock:
                    self._running -= 1
