"""Floors for bench.py: bare inference of a network on this machine, no server around it.

onnxruntime fp32 (what rembg runs) and OpenVINO, as the ONNX file is (fp32) and as our service
compiles it (ov_graph.prepare_network: bf16 where the weights allow, on CPUs with native bf16).
Each: median ms of one run on every core, and images/s with one single-thread run per core.
"""

from __future__ import annotations

import io
import os
import statistics
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnxruntime as ort
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from app.settings import Settings  # noqa: E402


def preprocessed(image: bytes, side: int = 320) -> np.ndarray:
    small = np.asarray(Image.open(io.BytesIO(image)).convert("RGB").resize((side, side), Image.Resampling.LANCZOS))
    x = small.astype(np.float32) / max(float(small.max()), 1.0)
    x = (x - np.array([0.485, 0.456, 0.406], np.float32)) / np.array([0.229, 0.224, 0.225], np.float32)
    return np.ascontiguousarray(x.transpose(2, 0, 1)[np.newaxis])


def _timed(run: Callable[[], object], runs: int) -> float:
    run()
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        run()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1000


def _parallel_rate(runners: list[Callable[[], object]], runs: int) -> float:
    """Images/s with every runner looping `runs` times in its own thread."""
    for run in runners:
        run()

    def loop(run: Callable[[], object]) -> None:
        for _ in range(runs):
            run()

    threads = [threading.Thread(target=loop, args=(run,)) for run in runners]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return len(runners) * runs / (time.perf_counter() - t0)


def ort_floor(weights: Path, x: np.ndarray, runs: int) -> tuple[float, float]:
    """Bare onnxruntime: (median ms with every core on one image, images/s with one 1-thread session per core)."""
    cores = os.cpu_count() or 1

    def session(threads: int) -> Callable[[], object]:
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        s = ort.InferenceSession(str(weights), options, providers=["CPUExecutionProvider"])
        feed = {s.get_inputs()[0].name: x}
        return lambda: s.run(None, feed)

    return _timed(session(cores), runs), _parallel_rate([session(1) for _ in range(cores)], runs)


def openvino_floor(weights: Path, x: np.ndarray, runs: int, mixed: bool) -> tuple[float, float] | None:
    """Bare OpenVINO: (median ms with every core on one image, images/s with one 1-thread stream per core).

    mixed: the service's own graph (ov_graph.prepare_network: first output only, concats split,
    bf16 where the weights' precision setting allows); None where the CPU has no native bf16 and
    the service would not use it. Otherwise the ONNX file as it is, in fp32.
    """
    try:
        import openvino as ov
    except ImportError:
        return None
    from app.inference.ov_graph import has_native_bf16, prepare_network

    cores = os.cpu_count() or 1
    core = ov.Core()
    if mixed and not has_native_bf16(core):
        return None
    precision = next(w.precision for w in Settings().weights.values() if w.file == weights.name)
    throughout = False
    if mixed:
        network, _, throughout = prepare_network(core, weights, True, precision)
    else:
        network = core.read_model(str(weights))

    def compiled(streams: int) -> list[Callable[[], object]]:
        hint = "bf16" if throughout else "f32"
        config = {"INFERENCE_PRECISION_HINT": hint, "NUM_STREAMS": streams, "INFERENCE_NUM_THREADS": cores}
        model = core.compile_model(network, "CPU", config)
        requests_ = [model.create_infer_request() for _ in range(streams)]
        return [lambda r=r: r.infer({0: x}) for r in requests_]

    return _timed(compiled(1)[0], runs), _parallel_rate(compiled(cores), runs)
