"""The fast path keeps the cut-outs: ghost matches rembg's own u2netp, and the speed levers stay honest.

Throughput and latency are measured by bench/bench.py, not here; these tests pin what those
levers must not break (same masks, lossless colour, lossless PNG from both encoders, bounded
inference, the same network output from both runtimes and after the graph rewrite, bf16 only
in the heaviest layers and close to fp32, memory given back, provider fallback).
"""

from __future__ import annotations

import io
import subprocess
import sys
import threading
import time

import numpy as np
import onnxruntime as ort
import openvino as ov
import pytest
from PIL import Image

from app.imaging.codec import encode_png
from app.inference.engine import choose_runtime, create_engine
from app.inference.ort_engine import OnnxRuntimeEngine, _providers, create_session
from app.inference.ov_engine import OpenVinoEngine
from app.inference.ov_graph import (
    BF16_MIN_SHARE,
    bf16_heaviest_convolutions,
    convolution_macs,
    has_native_bf16,
    split_concat_convolutions,
)
from app.settings import Settings
from harness import MODELS_DIR, ROOT, SHARED_TESTDATA, LiveServer, png_of, subject_image

pytestmark = pytest.mark.slow  # compiles the networks in both runtimes and times them

MIN_IOU = 0.99
SHARED_PHOTOS = sorted(SHARED_TESTDATA.glob("*.jpg")) if SHARED_TESTDATA.is_dir() else []


@pytest.fixture(scope="module")
def rembg_u2netp(monkeypatch_module: pytest.MonkeyPatch):
    # U2NET_HOME=models/: rembg finds u2netp.onnx there and downloads nothing.
    monkeypatch_module.setenv("U2NET_HOME", str(MODELS_DIR))
    from rembg import new_session, remove

    session = new_session("u2netp")
    return lambda data: np.asarray(png_of(remove(data, session=session, only_mask=True)).convert("L"))


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as mp:
        yield mp


def iou(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a >= 128, b >= 128
    return float((a & b).sum() / max((a | b).sum(), 1))


def large_photo_like(width: int, height: int) -> bytes:
    """Big enough that the model input is made with the reducing-gap shortcut."""
    yy, xx = np.mgrid[0:height, 0:width]
    inside = ((xx - width * 0.45) / (width * 0.22)) ** 2 + ((yy - height * 0.55) / (height * 0.3)) ** 2 <= 1
    rgb = np.empty((height, width, 3), np.uint8)
    rgb[...] = (215, 220, 205)
    rgb[inside] = (40, 70, 150)
    noise = np.random.default_rng(1).integers(-8, 9, rgb.shape)
    buf = io.BytesIO()
    Image.fromarray((rgb + noise).clip(0, 255).astype(np.uint8)).save(buf, "JPEG", quality=90)
    return buf.getvalue()


@pytest.mark.parametrize(
    "image",
    [
        pytest.param(lambda: subject_image(160, 120), id="small"),
        pytest.param(lambda: large_photo_like(2000, 1500), id="2000x1500"),
        *(pytest.param(photo.read_bytes, id=photo.name) for photo in SHARED_PHOTOS),
    ],
)
def test_ghost_mask_matches_rembg_u2netp(live_server: LiveServer, api_key: str, rembg_u2netp, image) -> None:
    data = image()
    response = live_server.remove(api_key, data, model="ghost", path="/v2/rembg/mask/")
    assert response.status_code == 200, response.text
    ours = np.asarray(png_of(response.content))
    theirs = rembg_u2netp(data)
    assert ours.shape == theirs.shape
    assert iou(ours, theirs) >= MIN_IOU, iou(ours, theirs)


def test_cutout_keeps_straight_colour_and_zeroes_only_invisible_pixels(live_server: LiveServer, api_key: str) -> None:
    # PNG in, so the decoded colour is exact and comparable with the output.
    source = np.asarray(png_of(subject_image(200, 150, fmt="PNG")).convert("RGB"))
    # refine_foreground=false: ghost's colour estimate on soft edges (issue 23) off, so colour is the photo's.
    fields = {"refine_foreground": "false"}
    response = live_server.remove(api_key, subject_image(200, 150, fmt="PNG"), model="ghost", fields=fields)
    assert response.status_code == 200, response.text
    cutout = np.asarray(png_of(response.content))
    alpha, rgb = cutout[..., 3], cutout[..., :3]
    assert (alpha == 0).any() and (alpha > 0).any()
    assert not rgb[alpha == 0].any(), "colour under fully transparent pixels is zero"
    np.testing.assert_array_equal(rgb[alpha > 0], source[alpha > 0])


@pytest.mark.parametrize("fast", [True, False], ids=["fpng", "pillow"])
@pytest.mark.parametrize("level", [1, 6])
def test_png_encoding_is_lossless_for_cutouts_and_masks(fast: bool, level: int) -> None:
    rng = np.random.default_rng(7)
    rgba = rng.integers(0, 256, (37, 53, 4), dtype=np.uint8)
    rgba[:10, :, 3] = 0  # runs of invisible pixels, as in a cut-out
    mask = rng.integers(0, 256, (37, 53), dtype=np.uint8)
    for pixels in (rgba, mask):
        decoded = Image.open(io.BytesIO(encode_png(pixels, level, fast)))
        assert decoded.mode == ("RGBA" if pixels.ndim == 3 else "L")
        np.testing.assert_array_equal(np.asarray(decoded), pixels)


def test_fast_png_is_much_faster_for_a_photo_sized_cutout() -> None:
    # The reason png_fast exists; measured in one process, a ratio, so a busy machine slows both alike.
    rgb = np.asarray(Image.open(io.BytesIO(large_photo_like(1200, 900))))
    alpha = np.zeros(rgb.shape[:2], np.uint8)
    alpha[200:700, 300:900] = 255
    rgba = np.dstack((rgb, alpha))

    def best_of(fast: bool) -> float:
        times = []
        for _ in range(5):
            t0 = time.perf_counter()
            encode_png(rgba, 1, fast)
            times.append(time.perf_counter() - t0)
        return min(times)

    assert best_of(True) * 4 < best_of(False)


def test_auto_runtime_is_openvino_on_cpu_and_onnxruntime_for_accelerators() -> None:
    assert choose_runtime(Settings(models_dir=MODELS_DIR)) == "openvino"
    cuda = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert choose_runtime(Settings(models_dir=MODELS_DIR, providers=cuda)) == "onnxruntime"
    assert choose_runtime(Settings(models_dir=MODELS_DIR, runtime="onnxruntime")) == "onnxruntime"
    assert choose_runtime(Settings(models_dir=MODELS_DIR, runtime="openvino", providers=cuda)) == "openvino"


def model_input(data: bytes) -> np.ndarray:
    """rembg's pre-processing of a photo for u2netp."""
    small = np.asarray(Image.open(io.BytesIO(data)).convert("RGB").resize((320, 320), Image.Resampling.LANCZOS))
    x = small.astype(np.float32) / max(float(small.max()), 1.0)
    x = (x - np.array([0.485, 0.456, 0.406], np.float32)) / np.array([0.229, 0.224, 0.225], np.float32)
    return np.ascontiguousarray(x.transpose(2, 0, 1)[np.newaxis])


def test_openvino_and_onnxruntime_give_the_same_mask() -> None:
    # With mixed precision off, OpenVINO computes the same fp32 network: no bf16, no int8.
    batch = model_input(large_photo_like(640, 480))
    ov_engine = create_engine(Settings(models_dir=MODELS_DIR, runtime="openvino", mixed_precision=False), "u2netp")
    ort_engine = create_engine(Settings(models_dir=MODELS_DIR, runtime="onnxruntime"), "u2netp")
    assert (ov_engine.runtime, ort_engine.runtime) == ("openvino", "onnxruntime")
    ours, theirs = ov_engine.run(batch), ort_engine.run(batch)
    assert ours.shape == theirs.shape == (1, 1, 320, 320)
    np.testing.assert_allclose(ours, theirs, atol=1e-3)


def test_concat_convolutions_are_split_without_changing_the_output() -> None:
    core = ov.Core()
    batch = model_input(large_photo_like(640, 480))

    def network() -> ov.Model:
        return core.read_model(str(MODELS_DIR / "u2netp.onnx"))

    split = network()
    assert split_concat_convolutions(split) > 0
    assert not any(
        op.get_type_name() == "Convolution" and op.input_value(0).get_node().get_type_name() == "Concat"
        for op in split.get_ordered_ops()
    )
    config = {"INFERENCE_PRECISION_HINT": "f32"}
    before = core.compile_model(network(), "CPU", config)({0: batch})[0]
    after = core.compile_model(split, "CPU", config)({0: batch})[0]
    np.testing.assert_allclose(after, before, atol=1e-4)


def test_mixed_precision_takes_only_the_heaviest_convolutions() -> None:
    network = ov.Core().read_model(str(MODELS_DIR / "u2netp.onnx"))
    split_concat_convolutions(network)
    macs = sorted(convolution_macs(op) for op in network.get_ordered_ops() if op.get_type_name() == "Convolution")
    assert bf16_heaviest_convolutions(network, BF16_MIN_SHARE) == 2
    # The two it takes are the network's largest layers, over a third of its work together.
    assert sum(macs[-2:]) > 0.35 * sum(macs) and macs[-3] < BF16_MIN_SHARE * sum(macs)
    convs = [op for op in network.get_ordered_ops() if op.get_type_name() == "Convolution"]
    assert sum(op.get_output_element_type(0) == ov.Type.bf16 for op in convs) == 2


def test_mixed_precision_leaves_a_network_of_unknown_input_size_in_f32() -> None:
    image = ov.opset13.parameter([1, 3, -1, -1], ov.Type.f32)
    kernel = ov.opset13.constant(np.ones((8, 3, 3, 3), np.float32))
    conv = ov.opset13.convolution(image, kernel, [1, 1], [1, 1], [1, 1], [1, 1])
    network = ov.Model([conv], [image])
    assert bf16_heaviest_convolutions(network, BF16_MIN_SHARE) == 0
    assert conv.get_output_element_type(0) == ov.Type.f32


def test_mixed_precision_engine_stays_close_to_f32() -> None:
    exact = OpenVinoEngine.create(Settings(models_dir=MODELS_DIR, mixed_precision=False), "u2netp")
    mixed = OpenVinoEngine.create(Settings(models_dir=MODELS_DIR, mixed_precision=True), "u2netp")
    assert (exact.bf16_convolutions, mixed.bf16_convolutions) == (0, 2 if has_native_bf16(ov.Core()) else 0)
    for image in (large_photo_like(640, 480), large_photo_like(2000, 1500), subject_image(160, 120)):
        batch = model_input(image)
        a, b = exact.run(batch), mixed.run(batch)
        # Measured: at most 0.0034 apart on these (probabilities in [0, 1]).
        np.testing.assert_allclose(b, a, atol=0.01)
        assert iou((a * 255).astype(np.uint8), (b * 255).astype(np.uint8)) >= MIN_IOU


def blocks_until_released(engine, hold, release) -> None:
    """With every slot held, a run waits; once one is given back, it completes."""
    batch = np.zeros((1, 3, 320, 320), np.float32)
    results: list[np.ndarray] = []
    held = hold()
    waiting = threading.Thread(target=lambda: results.append(engine.run(batch)))
    waiting.start()
    waiting.join(0.5)
    assert waiting.is_alive() and not results, "a run must wait while every slot is taken"
    release(held)
    waiting.join(60)
    assert results and results[0].shape == (1, 1, 320, 320)


def test_onnxruntime_engine_runs_at_most_the_configured_inferences_at_once() -> None:
    engine = OnnxRuntimeEngine.create(Settings(models_dir=MODELS_DIR, concurrent_inferences=1), "u2netp")
    blocks_until_released(engine, engine._slots.acquire, lambda _: engine._slots.release())


@pytest.mark.parametrize("streams", [1, 2])
def test_openvino_engine_runs_at_most_the_configured_inferences_at_once(streams: int) -> None:
    engine = OpenVinoEngine.create(Settings(models_dir=MODELS_DIR, concurrent_inferences=streams), "u2netp")
    blocks_until_released(
        engine,
        lambda: [engine._requests.get() for _ in range(streams)],
        lambda held: [engine._requests.put(r) for r in held],
    )


def test_lone_and_concurrent_runs_give_the_same_mask() -> None:
    # A lone run uses every core, a concurrent one a single thread: the mask must not depend on which.
    settings = Settings(models_dir=MODELS_DIR)
    batch = np.random.default_rng(3).normal(size=(1, 3, 320, 320)).astype(np.float32)
    wide, narrow = (create_session(settings, "u2netp", threads) for threads in (2, 1))
    feed = {wide.get_inputs()[0].name: batch}
    np.testing.assert_allclose(wide.run(None, feed)[0], narrow.run(None, feed)[0], atol=1e-5)


def test_unavailable_providers_fall_back_to_cpu() -> None:
    wanted = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    has_cuda = "CUDAExecutionProvider" in ort.get_available_providers()
    assert _providers(wanted) == (["CUDAExecutionProvider"] if has_cuda else []) + ["CPUExecutionProvider"]
    assert _providers([]) == ["CPUExecutionProvider"], "CPU is always there as the fallback"


def test_server_configured_for_cuda_serves_on_whatever_this_machine_has(start_server) -> None:
    server = start_server(CUTOUT_PROVIDERS='["CUDAExecutionProvider", "CPUExecutionProvider"]')
    key = server.create_key(5)
    response = server.remove(key, model="ghost")
    assert response.status_code == 200, response.text
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        assert "CUDAExecutionProvider" in server.log(), "the fallback is logged, not silent"


# Image-sized buffers under glibc's 32 MB adaptive ceiling: without the fix, ~20 MB of these stay
# in the heap after they are freed (measured); with it, RSS comes back.
FREE_AND_MEASURE = """
import numpy as np
from app.inference.memory import release_large_frees_to_os

def rss_mb():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024

assert release_large_frees_to_os()
before = rss_mb()
keep = []
for _ in range(5):
    rgba = np.ones((1500, 1000, 4), np.uint8)
    work = np.ones((1500, 1000, 3), np.float32)
    keep.append(np.zeros(1000))  # small live allocations above the freed ones, as in a server
    del rgba, work
print(rss_mb() - before)
"""


def test_large_buffers_go_back_to_the_os_when_freed() -> None:
    # A fresh interpreter: mallopt is process-wide and pytest's own heap history would blur the number.
    result = subprocess.run(
        [sys.executable, "-c", FREE_AND_MEASURE], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert float(result.stdout) < 5, f"{result.stdout.strip()} MB still held after the buffers were freed"
