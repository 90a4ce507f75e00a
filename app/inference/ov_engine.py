"""The OpenVINO engine: the CPU default (see engine.py for why).

One compiled model per weights file and operating resolution (ov_graph.scale_resize_sizes). With
`concurrent_inferences` = 1 (the default) it is compiled for latency: each run uses every core.
OpenVINO's threads scale almost perfectly on u2netp, so one run at a time over all cores gives the
throughput of two single-thread runs side by side with one set of activations instead of two
(measured: docs/performance.md). Higher values compile that many streams, each with its own threads
and activations. What runs in bf16: ov_graph.py.

Start-up and memory (create_sides): the sides of one weights file are compiled from one float graph,
f32 (ov_graph.widen_f16), kept as OpenVINO IR in the cache folder (ov_cache.prepared_network) and
mapped from there, so every compiled side reuses the same weights; OpenVINO's compiled-model cache
is used where a weights file runs at one side only (an imported network brings its own copy of the
weights). Once compiled, the mapped weights leave the resident set (memory.drop_mapped_pages): each
compiled network holds its own packed copy. The figures: docs/performance.md, "Start-up and memory
at rest".
"""

from __future__ import annotations

import logging
import os
import queue
from pathlib import Path
from typing import Literal

import numpy as np
import openvino as ov

from app.inference.cancel import interruptible
from app.inference.memory import drop_mapped_pages
from app.inference.ov_cache import compile_cached, compiled_cache_dir, prepared_network
from app.inference.ov_graph import BF16_MIN_SHARE, bf16_heaviest_convolutions, has_native_bf16, scale_resize_sizes
from app.settings import Settings

log = logging.getLogger("cutout.inference")


def compile_config(settings: Settings, bf16_throughout: bool = False) -> dict[str, object]:
    config: dict[str, object] = {
        # f32 unless the weights allow bf16 throughout (IS-Net). Not on u2netp, where OpenVINO would
        # pick bf16 by itself on CPUs that have it: faster, but its masks drift far from the f32 ones
        # (docs/performance.md; ghost must match rembg's). Layers converted by
        # bf16_heaviest_convolutions keep bf16 under an f32 hint.
        "INFERENCE_PRECISION_HINT": "bf16" if bf16_throughout else "f32",
    }
    # Every core this process may use (its affinity: a container's cpuset, not the host's cores).
    config["INFERENCE_NUM_THREADS"] = settings.intra_op_threads or len(os.sched_getaffinity(0))
    # Unpinned: a pinned inference thread cannot move when a request's decode or PNG encode lands
    # on its core, and its partner thread idles at the next barrier (measured with a zlib thread
    # running beside inference: docs/performance.md).
    config["ENABLE_CPU_PINNING"] = False
    # A stream runs one inference at a time on its share of the threads.
    config["NUM_STREAMS"] = settings.concurrent_inferences
    return config


def _log_start(weights_name: str, side: int | None, runs: str, origin: str, config: dict[str, object]) -> None:
    """The start-up log line of one compiled network: what it runs and how it was got."""
    where = f"{weights_name} at {side or 'its exported size'}"
    log.info("%s: %s; %s; OpenVINO %s on CPU, %s", where, runs, origin, ov.get_version(), config)


class OpenVinoEngine:
    runtime: Literal["openvino"] = "openvino"

    def __init__(
        self, compiled: ov.CompiledModel, concurrent_inferences: int, bf16_convolutions: int = 0, precision: str = "f32"
    ) -> None:
        self.bf16_convolutions = bf16_convolutions
        # What the network runs in: "int8", "bf16" (throughout) or "f32" (bf16_convolutions in bf16).
        self.precision = precision
        # One infer request per run in flight; a run waits here for a free one (the bound on memory).
        self._requests: queue.SimpleQueue[ov.InferRequest] = queue.SimpleQueue()
        for _ in range(concurrent_inferences):
            self._requests.put(compiled.create_infer_request())

    @classmethod
    def create(cls, settings: Settings, weights_name: str, side: int | None = None) -> OpenVinoEngine:
        return cls.create_sides(settings, weights_name, [side])[side]

    @classmethod
    def create_sides(
        cls, settings: Settings, weights_name: str, sides: list[int | None]
    ) -> dict[int | None, OpenVinoEngine]:
        """An engine per side (None: the exported size) of one weights file. The native ones are
        compiled from one prepared_network: with two sides or more, each from a copy of the graph
        that shares its weights, without OpenVINO's cache (importing would give each side its own
        f32 weights: +180 MiB with IS-Net at 768 and 1024, docs/performance.md); with one side,
        through the cache, so that a later start imports it instead of compiling."""
        from app.inference import quantization

        core = ov.Core()
        cache = compiled_cache_dir(settings)
        engines: dict[int | None, OpenVinoEngine] = {}
        native: list[tuple[int | None, str]] = []
        for side in dict.fromkeys(sides):
            int8, why = quantization.choose_int8(settings, weights_name, side)
            if int8 is None:
                native.append((side, why))
            else:
                engines[side] = cls._int8(core, settings, weights_name, side, (int8, why), cache)
        if native:
            engines.update(cls._native(core, settings, weights_name, native, cache))
        if cache is not None:
            drop_mapped_pages(cache)
        return {side: engines[side] for side in sides}

    @classmethod
    def _int8(
        cls,
        core: ov.Core,
        settings: Settings,
        weights_name: str,
        side: int | None,
        chosen: tuple[Path, str],
        cache: Path | None,
    ) -> OpenVinoEngine:
        """Compiled from the file, not from a graph: with the cache, a later start imports the
        compiled network without reading the IR at all. Its float layers (those NNCF keeps in
        float) follow the same bf16 rule as the native network's."""
        path, why = chosen
        spec = settings.weights[weights_name]
        throughout = spec.precision == "bf16" and settings.mixed_precision and has_native_bf16(core)
        config = compile_config(settings, throughout)
        compiled, origin = compile_cached(core, str(path), config, cache, f"{weights_name} at {side}")
        runs = f"INT8 ({why}), float layers in {'bf16' if throughout else 'f32'}"
        _log_start(weights_name, side, runs, origin, config)
        return cls(compiled, settings.concurrent_inferences, 0, "int8")

    @classmethod
    def _native(
        cls,
        core: ov.Core,
        settings: Settings,
        weights_name: str,
        native: list[tuple[int | None, str]],
        cache: Path | None,
    ) -> dict[int | None, OpenVinoEngine]:
        """The native sides, (side, why it is native) each, from one prepared_network."""
        network = prepared_network(core, settings, weights_name)
        shared = len(native) > 1
        bf16_native = settings.mixed_precision and has_native_bf16(core)
        throughout = bf16_native and settings.weights[weights_name].precision == "bf16"
        engines: dict[int | None, OpenVinoEngine] = {}
        for side, why in native:
            graph = network.clone() if shared else network
            if side is not None:
                scale_resize_sizes(graph, side)
            bf16 = bf16_heaviest_convolutions(graph, BF16_MIN_SHARE) if bf16_native and not throughout else 0
            config = compile_config(settings, throughout)
            compiled, origin = compile_cached(
                core, graph, config, None if shared else cache, f"{weights_name} at {side}"
            )
            if shared:
                origin = f"compiled, weights shared by {len(native)} sides"
            runs = "bf16 throughout" if throughout else f"f32, {bf16} convolutions in bf16"
            _log_start(weights_name, side, f"native, {runs} ({why})", origin, config)
            engines[side] = cls(compiled, settings.concurrent_inferences, bf16, "bf16" if throughout else "f32")
        return engines

    def run(self, batch: np.ndarray) -> np.ndarray:
        request = self._requests.get()
        try:
            # Asynchronous so that a cancelled job (client gone) can interrupt the run from the event loop.
            with interruptible(request.cancel):
                request.start_async({0: batch})
                request.wait()
            # The request reuses its output buffer on the next run: hand out a copy.
            out: np.ndarray = request.get_output_tensor(0).data.copy()
            return out
        finally:
            self._requests.put(request)
