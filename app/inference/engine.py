"""ONNX sessions: execution providers (CUDA with CPU fallback), session options, and the bound on concurrent runs."""

from __future__ import annotations

import logging
import threading

import numpy as np
import onnxruntime as ort

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


def create_session(settings: Settings, weights_name: str) -> ort.InferenceSession:
    options = ort.SessionOptions()
    # ENABLE_ALL adds the NCHWc layout transforms: the fastest CPU kernels for these convolutions.
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = settings.intra_op_threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
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


class Engine:
    """One ONNX session plus the bound on how many inferences run on it at once.

    Concurrent runs share the session's intra-op thread pool: a lone request gets every core
    (latency), two at once keep both cores busy without thread hand-offs (throughput). Each run
    in flight holds its own activations (~280 MB for u2netp), hence the bound.
    """

    def __init__(self, session: ort.InferenceSession, concurrent_inferences: int) -> None:
        self.session = session
        self._input = session.get_inputs()[0].name
        self._output = session.get_outputs()[0].name
        self._slots = threading.BoundedSemaphore(concurrent_inferences)

    def run(self, batch: np.ndarray) -> np.ndarray:
        """The first output for an N x C x H x W float32 batch."""
        with self._slots:
            return self.session.run([self._output], {self._input: batch})[0]
