"""The fast path keeps the cut-outs: ghost matches rembg's own u2netp, and the speed levers stay honest.

Throughput and latency are measured by bench/bench.py, not here; these tests pin what those
levers must not break (same masks, lossless colour, bounded inference, memory given back,
provider fallback).
"""

from __future__ import annotations

import io
import subprocess
import sys
import threading

import numpy as np
import onnxruntime as ort
import pytest
from PIL import Image

from app.inference.engine import Engine, _providers, create_session
from app.settings import Settings
from conftest import MODELS_DIR, ROOT, SHARED_TESTDATA, LiveServer, png_of, subject_image

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
    response = live_server.remove(api_key, subject_image(200, 150, fmt="PNG"), model="ghost")
    assert response.status_code == 200, response.text
    cutout = np.asarray(png_of(response.content))
    alpha, rgb = cutout[..., 3], cutout[..., :3]
    assert (alpha == 0).any() and (alpha > 0).any()
    assert not rgb[alpha == 0].any(), "colour under fully transparent pixels is zero"
    np.testing.assert_array_equal(rgb[alpha > 0], source[alpha > 0])


def test_engine_runs_at_most_the_configured_inferences_at_once() -> None:
    engine = Engine.create(Settings(models_dir=MODELS_DIR, concurrent_inferences=1), "u2netp")
    batch = np.zeros((1, 3, 320, 320), np.float32)
    results: list[np.ndarray] = []
    engine._slots.acquire()  # an inference in progress holds the only slot
    waiting = threading.Thread(target=lambda: results.append(engine.run(batch)))
    waiting.start()
    waiting.join(0.5)
    assert waiting.is_alive() and not results, "a second inference must wait for the slot"
    engine._slots.release()
    waiting.join(60)
    assert results and results[0].shape == (1, 1, 320, 320)


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
    result = subprocess.run([sys.executable, "-c", FREE_AND_MEASURE], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert float(result.stdout) < 5, f"{result.stdout.strip()} MB still held after the buffers were freed"
