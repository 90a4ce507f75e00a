"""The service's graphs of a weights file for OpenVINO: the rewrites that make it faster or let it
run at another side, and the precision rules (ov_engine.py compiles them, ov_cache.py keeps them).

Precision: f32, except that with `mixed_precision` (the default) on a CPU with native bf16 the
few convolutions that carry most of the work run in bf16 (bf16_heaviest_convolutions): a run
takes less time and the masks stay close to the f32 ones (how much of each: docs/performance.md).
Weights marked `precision = "bf16"` (IS-Net) run in bf16 throughout: there the masks stay within
IoU 0.99 of f32 on every benchmark photo at the resolutions offered (docs/performance.md).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import openvino as ov
import openvino.opset13 as ops

# bf16_heaviest_convolutions' cut: on u2netp it takes the two heaviest layers and none of the
# much lighter next ones, which saved next to nothing each in bf16 (the converts cost most of what
# the layer saves) and moved the masks more than the two big ones together (docs/performance.md).
BF16_MIN_SHARE = 0.10


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


# oneDNN's instruction-set levels that include bf16 arithmetic (its ONEDNN_MAX_CPU_ISA values).
BF16_ISAS = ("AVX512_CORE_BF16", "AVX512_CORE_FP16", "AVX512_CORE_AMX", "AVX10", "ALL")


def has_native_bf16(core: ov.Core) -> bool:
    """AVX512-BF16 or AMX. Mixed precision is used only there: it was measured on such a CPU, and
    elsewhere the CPU has no bf16 instructions to run those layers with. ONEDNN_MAX_CPU_ISA (oneDNN's
    own cap, e.g. AVX2, to reproduce a CPU without bf16 on one with it) is honoured: OpenVINO still
    reports BF16 under it, and a bf16 network then fails to compile."""
    cap = os.environ.get("ONEDNN_MAX_CPU_ISA", "").upper()
    if cap and not cap.startswith(BF16_ISAS):
        return False
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
