"""The OpenVINO engine: the CPU default (see engine.py for why).

One compiled model per weights file and operating resolution (scale_resize_sizes). With `concurrent_inferences` = 1 (the default) it is
compiled for latency: each run uses every core. OpenVINO's threads scale almost perfectly on
u2netp, so one run at a time over all cores gives the throughput of two single-thread runs side
by side with one set of activations instead of two (measured: docs/performance.md). Higher values compile that many streams, each with its own threads and activations.

Precision: f32, except that with `mixed_precision` (the default) on a CPU with native bf16 the
few convolutions that carry most of the work run in bf16 (bf16_heaviest_convolutions): a run
takes less time and the masks stay close to the f32 ones (how much of each: docs/performance.md).
Weights marked `precision = "bf16"` (IS-Net) run in bf16 throughout: there the masks stay within
IoU 0.99 of f32 on every benchmark photo at the resolutions offered (docs/performance.md).

Start-up and memory (create_sides): the sides of one weights file are compiled from one float graph,
f32 (widen_f16), kept as OpenVINO IR in the cache folder (prepared_network) and mapped from there,
so every compiled side reuses the same weights; OpenVINO's compiled-model cache is used where a
weights file runs at one side only (an imported network brings its own copy of the weights). Once
compiled, the mapped weights leave the resident set (memory.drop_mapped_pages): each compiled
network holds its own packed copy. The figures: docs/performance.md, "Start-up and memory at rest".
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
import queue
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

import numpy as np
import openvino as ov
import openvino.opset13 as ops

from app.inference.cancel import interruptible
from app.inference.memory import drop_mapped_pages
from app.settings import Settings

log = logging.getLogger("cutout.inference")

# bf16_heaviest_convolutions' cut: on u2netp it takes the two heaviest layers and none of the
# much lighter next ones, which saved next to nothing each in bf16 (the converts cost most of what
# the layer saves) and moved the masks more than the two big ones together (docs/performance.md).
BF16_MIN_SHARE = 0.10

# Under models_dir: OpenVINO's compiled-model cache (compiled_cache_dir).
COMPILED_CACHE_DIR = "ov-cache"

# In the cache folder: held by the process compiling through OpenVINO's cache (_compile).
COMPILE_LOCK = ".compile.lock"

# Bumped whenever what prepared_network makes changes (prepare_float_network, widen_f16): the
# folders it saved before are then neither read nor overwritten, a new one is made beside them.
PREPARED_VERSION = 1


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


def split_concat_convolutions(network: ov.Model) -> int:
    """Conv(Concat(a, b)) -> Conv(a, W[:, :A]) + Conv(b, W[:, A:]): the same sum, without the concat copy.

    U2-Net concatenates before most decoder convolutions; OpenVINO copies each concat (~5 ms a run)
    and fuses the Add into the second convolution. Measured ~2% faster per run (94.4 -> 92.5 ms);
    outputs differ only in float rounding (within 1e-5). Returns how many convolutions were split.
    """
    split = 0
    for conv in network.get_ordered_ops():
        if conv.get_type_name() != "Convolution":
            continue
        concat, weights = conv.input_value(0).get_node(), conv.input_value(1).get_node()
        if (
            concat.get_type_name() != "Concat"
            or concat.get_attributes()["axis"] != 1
            or weights.get_type_name() != "Constant"
            or len(concat.output(0).get_target_inputs()) != 1
            or any(v.get_partial_shape()[1].is_dynamic for v in concat.input_values())
        ):
            continue
        kernel = weights.get_data()  # out channels x in channels x kh x kw
        attrs = conv.get_attributes()
        total, start = None, 0
        for part in concat.input_values():
            channels = part.get_partial_shape()[1].get_length()
            piece = ops.constant(np.ascontiguousarray(kernel[:, start : start + channels]))
            out = ops.convolution(
                part,
                piece,
                attrs["strides"],
                attrs["pads_begin"],
                attrs["pads_end"],
                attrs["dilations"],
                attrs["auto_pad"],
            )
            total = out if total is None else ops.add(total, out)
            start += channels
        assert total is not None  # the loop ran over at least one group
        conv.output(0).replace(total.output(0))
        split += 1
    network.validate_nodes_and_infer_types()
    return split


def scale_resize_sizes(network: ov.Model, side: int) -> None:
    """Make a square network whose upsamplings were exported with fixed sizes run at `side` x `side`.

    IS-Net's ONNX export resizes each decoder feature to a constant size (Concat(shape[:2], [32, 32]));
    scaling those constants with the input lets the same weights run at a lower resolution. Raises
    ValueError when a size would not stay a whole number (the pyramid would not line up).
    """
    parameter = network.get_parameters()[0]
    native = parameter.get_partial_shape()[2].get_length()
    if side == native:
        return
    # The new input shape and the scaled sizes must be in place together before shapes are inferred
    # again (Model.reshape would check every concat against the old sizes first).
    parameter.set_partial_shape(ov.PartialShape([1, 3, side, side]))
    for op in network.get_ordered_ops():
        if op.get_type_name() != "Interpolate":
            continue
        sizes = op.input_value(1).get_node()
        for part in sizes.input_values() if sizes.get_type_name() == "Concat" else []:
            node = part.get_node()
            if node.get_type_name() != "Constant" or node.get_element_type() != ov.Type.i64:
                continue
            hw = node.get_data()
            scaled = hw * side // native
            if (scaled * native != hw * side).any():
                raise ValueError(f"{side} does not divide the network's pyramid (a resize to {hw.tolist()})")
            part.replace(ops.constant(scaled.astype(np.int64)).output(0))
    network.validate_nodes_and_infer_types()


def convolution_macs(conv: ov.Node) -> int:
    """Multiply-adds of one Convolution: output elements x kernel size x input channels."""
    kernel = conv.input_value(1).get_shape()
    return int(np.prod(conv.output(0).get_shape()[1:])) * int(np.prod(kernel[1:]))


def bf16_heaviest_convolutions(network: ov.Model, min_share: float) -> int:
    """Run each convolution that carries at least `min_share` of the network's multiply-adds in bf16.

    The rest of the network stays f32. On u2netp the rule picks the two halves (after
    split_concat_convolutions) of its last decoder stage's input convolution, 64+64 -> 64 channels
    at 320x320: a large share of the work in two layers. The time saved and how close ghost's masks
    stay to f32 (on the benchmark photos and variants of them): docs/performance.md. Returns how
    many convolutions were converted.
    """
    convs = [op for op in network.get_ordered_ops() if op.get_type_name() == "Convolution"]
    if any(conv.get_output_partial_shape(0).is_dynamic for conv in convs):
        return 0  # shares of the work cannot be known before the input size is: stay f32
    total = sum(convolution_macs(conv) for conv in convs)
    converted = 0
    for conv in convs:
        if convolution_macs(conv) < min_share * total:
            continue
        attrs = conv.get_attributes()
        # An explicit Convert pins this one layer to bf16 whatever the inference precision hint says.
        low = ops.convolution(
            ops.convert(conv.input_value(0), ov.Type.bf16),
            ops.convert(conv.input_value(1), ov.Type.bf16),
            attrs["strides"],
            attrs["pads_begin"],
            attrs["pads_end"],
            attrs["dilations"],
            attrs["auto_pad"],
        )
        conv.output(0).replace(ops.convert(low, ov.Type.f32).output(0))
        converted += 1
    network.validate_nodes_and_infer_types()
    return converted


def has_native_bf16(core: ov.Core) -> bool:
    """AVX512-BF16 or AMX. Mixed precision is used only there: it was measured on such a CPU, and
    elsewhere the CPU has no bf16 instructions to run those layers with."""
    return "BF16" in core.get_property("CPU", "OPTIMIZATION_CAPABILITIES")


def prepare_float_network(core: ov.Core, weights: Path, side: int | None = None, split: bool = True) -> ov.Model:
    """The service's f32 graph of these weights at `side` (None: the exported size), before any
    precision choice: the first output only, the resize sizes scaled, the concats split (`split`).
    The INT8 networks are quantized from this graph, concats unsplit (quantization.py): each
    convolution keeps its name from the export, which the recipes' float layers are named by."""
    network = core.read_model(str(weights))
    # Only the first output is used (the fused mask; the others are side outputs for training):
    # dropping them saves their sigmoids and copies, ~1% per run on u2netp, the first output unchanged.
    network = ov.Model([network.get_results()[0]], network.get_parameters(), weights.stem)
    if side is not None:
        scale_resize_sizes(network, side)
    if split:
        split_concat_convolutions(network)
    return network


def widen_f16(network: ov.Model) -> int:
    """f16 constants and f16 computation -> f32, in the graph itself. The CPU plugin does the same
    to an f16 network (IS-Net is exported in f16) inside every compile, each compile making its own
    f32 copy of the weights; done once here, every side compiled from this graph shares one copy.
    The outputs are the same to the bit (measured at 768 and 1024). Returns how many nodes changed."""
    changed = 0
    for op in network.get_ordered_ops():
        kind = op.get_type_name()
        if kind == "Constant" and op.get_element_type() == ov.Type.f16:
            op.output(0).replace(ops.constant(op.get_data().astype(np.float32)).output(0))
        elif kind == "Convert" and op.get_attributes()["destination_type"] == "f16":
            source = op.input_value(0)
            op.output(0).replace(
                source if source.get_element_type() == ov.Type.f32 else ops.convert(source, ov.Type.f32).output(0)
            )
        else:
            continue
        changed += 1
    network.validate_nodes_and_infer_types()
    return changed


def prepared_folder(settings: Settings, weights_name: str, cache: Path) -> Path:
    """Where prepared_network keeps the graph of these weights: named by their checksum (verified at
    start), PREPARED_VERSION and OpenVINO's version, so another file, recipe or runtime never reads it."""
    spec = settings.weights[weights_name]
    identity = spec.sha256 or spec.md5
    if not identity:
        stat = settings.weights_path(weights_name).stat()
        identity = f"{stat.st_size}-{stat.st_mtime_ns}"
    key = hashlib.sha256(f"{identity} {PREPARED_VERSION} {ov.get_version()}".encode()).hexdigest()[:16]
    return cache / f"{Path(spec.file).stem}-f32-{key}"


def prepared_network(core: ov.Core, settings: Settings, weights_name: str) -> ov.Model:
    """The float graph every side of these weights is compiled from: prepare_float_network at the
    exported size, f32 (widen_f16). Read from the cache folder where a start before saved it (its
    weights mapped from the file: reading it takes milliseconds and copies nothing), else made from
    the weights file and saved there, then read back, so the first start holds it as later ones do.

    Safe for replicas sharing the folder: each saves into a folder of its own and renames it into
    place in one step; one that finds the name taken reads the one already there. A saved graph
    that cannot be read is made again in memory (a slower start, never a wrong one)."""
    cache = compiled_cache_dir(settings)
    folder = prepared_folder(settings, weights_name, cache) if cache is not None else None
    if folder is not None and (folder / "network.xml").is_file():
        try:
            return core.read_model(str(folder / "network.xml"))
        except RuntimeError as err:
            log.warning("%s: cannot read %s (%s); preparing it again", weights_name, folder, err)
            folder = None
    network = prepare_float_network(core, settings.weights_path(weights_name), split=False)
    widen_f16(network)
    split_concat_convolutions(network)
    if folder is None:
        return network
    try:
        staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
        staging.chmod(0o755)  # mkdtemp's 0700 would keep replicas running as another user out
        ov.save_model(network, str(staging / "network.xml"), compress_to_fp16=False)
        try:
            staging.rename(folder)
        except OSError:  # another replica saved it first: same graph, keep theirs
            for entry in staging.iterdir():
                entry.unlink()
            staging.rmdir()
        return core.read_model(str(folder / "network.xml"))
    except (OSError, RuntimeError) as err:
        log.warning("%s: cannot keep its prepared graph in %s (%s)", weights_name, folder.parent, err)
        return network


def prepare_network(
    core: ov.Core, weights: Path, mixed_precision: bool, precision: str = "mixed", side: int | None = None
) -> tuple[ov.Model, int, bool]:
    """The graph the service compiles at `side` (None: the exported size), how many of its
    convolutions run in bf16, and whether all of it does (precision "bf16" on a CPU with native bf16)."""
    network = prepare_float_network(core, weights, side)
    if not (mixed_precision and has_native_bf16(core)):
        return network, 0, False
    if precision == "bf16":
        return network, 0, True
    return network, bf16_heaviest_convolutions(network, BF16_MIN_SHARE), False


def compiled_cache_dir(settings: Settings) -> Path | None:
    """Where OpenVINO keeps compiled networks (CACHE_DIR) so that a later start imports them instead
    of compiling: `models_dir/ov-cache`, else `data_dir/ov-cache` where the models folder is read-only
    (the container image); None where the setting is off or neither is writable.

    Replicas may share it: OpenVINO names each entry by a hash of the network, the device and the
    compile settings, so replicas that compile the same thing write the same entry; they take turns
    to compile through it (_compile's lock: OpenVINO writes entries in place), and an entry it cannot
    import is compiled again instead: that start is only slower, never wrong. The prepared graphs
    are saved by rename (prepared_network). tests/test_compiled_cache.py starts replicas together."""
    if not settings.compiled_cache:
        return None
    for parent in (settings.models_dir, settings.data_dir):
        folder = parent / COMPILED_CACHE_DIR
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError:
            continue
        if os.access(folder, os.W_OK):
            return folder
    log.warning("compiled-model cache off: neither %s nor %s is writable", settings.models_dir, settings.data_dir)
    return None


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive lock on `path` (created if missing) between processes, held for the block."""
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _compile(
    core: ov.Core, model: ov.Model | str, config: dict[str, object], cache: Path | None, what: str
) -> tuple[ov.CompiledModel, str]:
    """compile_model, through OpenVINO's compiled-model cache in `cache` (None: not). Replicas that
    write the same entry at once can make OpenVINO fail on the file itself (seen: "cannot set
    permissions: No such file or directory", tests/test_compiled_cache.py); that start then
    compiles without the cache: slower, never failed. A network that does not compile fails again.
    Returns the compiled network and how it was got, for the start-up log."""
    if cache is None:
        return core.compile_model(model, "CPU", config), "compiled"
    try:
        # One process at a time compiles through the cache: OpenVINO writes an entry in place, and a
        # replica importing (mapping) it meanwhile died of SIGBUS when it was cut short under it
        # (4 replicas started at once on an empty folder: 2 of 32 before the lock, none after).
        with _locked(cache / COMPILE_LOCK):
            compiled = core.compile_model(model, "CPU", {**config, "CACHE_DIR": str(cache)})
    except RuntimeError as err:
        log.warning("%s: compiled-model cache unusable this time, compiling without it: %s", what, str(err).strip())
        return core.compile_model(model, "CPU", config), "compiled without the compiled-model cache (see above)"
    if compiled.get_property("LOADED_FROM_CACHE"):
        return compiled, "imported from the compiled-model cache"
    return compiled, "compiled, saved to the compiled-model cache"


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
        spec = settings.weights[weights_name]
        engines: dict[int | None, OpenVinoEngine] = {}
        native: list[tuple[int | None, str]] = []
        for side in dict.fromkeys(sides):
            int8, why = quantization.choose_int8(settings, weights_name, side)
            if int8 is None:
                native.append((side, why))
                continue
            # Compiled from the file, not from a graph: with the cache, a later start imports the
            # compiled network without reading the IR at all. Its float layers (those NNCF keeps in
            # float) follow the same bf16 rule as the native network's.
            throughout = spec.precision == "bf16" and settings.mixed_precision and has_native_bf16(core)
            config = compile_config(settings, throughout)
            compiled, origin = _compile(core, str(int8), config, cache, f"{weights_name} at {side}")
            log.info(
                "%s at %s: INT8 (%s), float layers in %s; %s; OpenVINO %s on CPU, %s",
                weights_name,
                side or "its exported size",
                why,
                "bf16" if throughout else "f32",
                origin,
                ov.get_version(),
                config,
            )
            engines[side] = cls(compiled, settings.concurrent_inferences, 0, "int8")
        if native:
            network = prepared_network(core, settings, weights_name)
            shared = len(native) > 1
            bf16_native = settings.mixed_precision and has_native_bf16(core)
            for side, why in native:
                graph = network.clone() if shared else network
                if side is not None:
                    scale_resize_sizes(graph, side)
                throughout = bf16_native and spec.precision == "bf16"
                bf16 = bf16_heaviest_convolutions(graph, BF16_MIN_SHARE) if bf16_native and not throughout else 0
                config = compile_config(settings, throughout)
                compiled, origin = _compile(core, graph, config, None if shared else cache, f"{weights_name} at {side}")
                if shared:
                    origin = f"compiled, weights shared by {len(native)} sides"
                runs = "bf16 throughout" if throughout else f"f32, {bf16} convolutions in bf16"
                log.info(
                    "%s at %s: native, %s (%s); %s; OpenVINO %s on CPU, %s",
                    weights_name,
                    side or "its exported size",
                    runs,
                    why,
                    origin,
                    ov.get_version(),
                    config,
                )
                engines[side] = cls(compiled, settings.concurrent_inferences, bf16, "bf16" if throughout else "f32")
            del network, graph
        if cache is not None:
            drop_mapped_pages(cache)
        return {side: engines[side] for side in sides}

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
