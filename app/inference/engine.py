"""Which runtime runs the networks: one Engine per weights file, from the `runtime` setting.

- openvino: the CPU default. In fp32 the same masks as onnxruntime in less time per inference
  here (bench/bench.py's floors) and with far fewer activations per run; with mixed precision
  (ov_engine.py) less time again. The figures: docs/performance.md.
- onnxruntime: the GPU path (CUDA execution provider, the [gpu] extra) and the fallback.

"auto" takes onnxruntime when a non-CPU execution provider is configured, else OpenVINO when it
is installed, else onnxruntime.
"""

from __future__ import annotations

import importlib.util
import logging
from typing import Literal, Protocol

import numpy as np

from app.settings import Settings

log = logging.getLogger("cutout.inference")

Runtime = Literal["openvino", "onnxruntime"]


class Engine(Protocol):
    @property
    def runtime(self) -> Runtime: ...

    def run(self, batch: np.ndarray) -> np.ndarray:
        """The first output for an N x C x H x W float32 batch; blocks while the engine is full."""
        ...


def choose_runtime(settings: Settings) -> Runtime:
    wants_accelerator = any(p != "CPUExecutionProvider" for p in settings.providers)
    has_openvino = importlib.util.find_spec("openvino") is not None
    if settings.runtime == "openvino" and not has_openvino:
        log.warning("runtime openvino is not installed (pip install openvino); using onnxruntime")
    if settings.runtime == "onnxruntime" or not has_openvino:
        return "onnxruntime"
    if settings.runtime == "auto" and wants_accelerator:
        return "onnxruntime"
    return "openvino"


def missing_runtime(settings: Settings) -> str | None:
    """One line for the operator when the runtime the settings pick is not installed, else None."""
    runtime = choose_runtime(settings)
    if importlib.util.find_spec(runtime) is not None:
        return None
    return (
        f"cannot serve: {runtime} is not installed. Install a runtime extra: "
        'pip install "cutout[cpu]" (OpenVINO, CPU) or pip install "cutout[gpu]" (onnxruntime-gpu, CUDA)'
    )


class FixedSize(Exception):
    """The runtime cannot run this network at another input size than the one it was exported with."""


def create_engine(settings: Settings, weights_name: str, side: int | None = None) -> Engine:
    """An engine for the weights at `side` x `side` (None: the size the network was exported with).

    Raises FixedSize where the runtime cannot change the network's size (onnxruntime: IS-Net's
    upsamplings have their sizes baked in; only OpenVINO's graph API rewrites them).
    """
    made = create_engines(settings, weights_name, [side])[side]
    if isinstance(made, FixedSize):
        raise made
    return made


def create_engines(
    settings: Settings, weights_name: str, sides: list[int | None]
) -> dict[int | None, Engine | FixedSize]:
    """An engine per side of one weights file, or the FixedSize that says why the runtime cannot run
    that side. Made together so that OpenVINO compiles every side from one graph whose weights they
    share (ov_engine.OpenVinoEngine.create_sides)."""
    # Imported here: a process loads only the runtime it uses (each is tens of MB of libraries).
    if choose_runtime(settings) == "openvino":
        from app.inference.ov_engine import OpenVinoEngine

        return dict(OpenVinoEngine.create_sides(settings, weights_name, sides))
    from app.inference.ort_engine import OnnxRuntimeEngine

    made: dict[int | None, Engine | FixedSize] = {}
    for side in sides:
        engine = OnnxRuntimeEngine.create(settings, weights_name)
        if side is not None and engine.input_side not in (None, side):
            made[side] = FixedSize(
                f"{weights_name} runs only at {engine.input_side}x{engine.input_side} on onnxruntime"
            )
        else:
            made[side] = engine
    return made
