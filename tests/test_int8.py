"""INT8 networks (app/inference/quantization.py): made from the verified weights, used when current,
native precision (with a log line saying why) when not; close to native; the recipe deterministic.

Real weights and real OpenVINO throughout. The INT8 networks of models/int8/ are made by
`python -m app models fetch` with the quantize extra (scripts/setup does it); tests that need
them skip where they are absent. No photo from outside: the images are the generated composites
of quantization.calibration_images with another seed than the recipe's (not calibration data).
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import openvino as ov
import pytest

from app.inference import quantization
from app.inference.engine import create_engine
from app.inference.ov_cache import COMPILED_CACHE_DIR
from app.inference.ov_engine import OpenVinoEngine
from app.inference.ov_graph import prepare_float_network
from app.inference.pipeline import Pipeline
from app.inference.recheck import OnDemandEngine
from app.inference.registry import ModelRegistry
from app.settings import Settings
from harness import MODELS_DIR

SHIPPED = Settings(models_dir=MODELS_DIR)
# Images the recipe never saw: its composites use seed 0.
TEST_SEED = 20


def _int8_present(side: int) -> bool:
    return quantization.stale_reason(SHIPPED, "isnet", side) is None


needs_int8 = pytest.mark.skipif(
    not all(_int8_present(side) for side in quantization.served_sides(SHIPPED, "isnet")),
    reason="no current INT8 networks in models/int8 (python -m app models fetch with the quantize extra)",
)


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    fa, fb = a >= 128, b >= 128
    union = np.logical_or(fa, fb).sum()
    return float(np.logical_and(fa, fb).sum() / union) if union else 1.0


def _models_dir_with_weights(tmp_path: Path) -> Path:
    models = tmp_path / "models"
    models.mkdir()
    for weights in ("u2netp.onnx", "isnet.onnx"):
        (models / weights).symlink_to(MODELS_DIR / weights)
    return models


class Recording:
    """An engine that keeps what it is given and answers an empty mask: what the pipeline feeds a network."""

    runtime = "openvino"

    def __init__(self) -> None:
        self.batches: list[np.ndarray] = []

    def run(self, batch: np.ndarray) -> np.ndarray:
        self.batches.append(batch.copy())
        return np.zeros((1, 1, *batch.shape[2:]), np.float32)


@pytest.mark.parametrize("model", ["ghost", "falcon", "aurora"])
def test_calibration_inputs_are_what_the_pipeline_feeds_the_network(model: str) -> None:
    spec = SHIPPED.models[model]
    side = spec.input_size
    rgb = quantization.calibration_images(7, seed=TEST_SEED)[-1]
    engine = Recording()
    Pipeline(model, spec, {f"{side}x{side}": engine}).predict(rgb)
    np.testing.assert_array_equal(quantization.model_input(rgb, spec, side), engine.batches[0])


def test_calibration_images_come_from_the_declared_dependency_and_repeat() -> None:
    first, second = quantization.calibration_images(16), quantization.calibration_images(16)
    assert len(first) == 16
    assert all(a.dtype == np.uint8 and a.ndim == 3 and a.shape[2] == 3 for a in first)
    assert all(np.array_equal(a, b) for a, b in zip(first, second, strict=True))
    # The bundled photos first, then their mirror images, then composites.
    photos = len(quantization.CALIBRATION_PHOTOS)
    assert np.array_equal(first[photos], first[0][:, ::-1])


def test_without_an_int8_network_the_engine_runs_native_and_says_why(tmp_path: Path, caplog) -> None:
    settings = Settings(models_dir=_models_dir_with_weights(tmp_path), precision="int8")
    with caplog.at_level(logging.INFO, "cutout.inference"):
        engine = create_engine(settings, "isnet", 768)
    assert isinstance(engine, OpenVinoEngine) and engine.precision in ("f32", "bf16")
    assert "no INT8 network" in caplog.text and "isnet at 768: native" in caplog.text


def test_u2netp_stays_native_and_the_log_says_why(caplog) -> None:
    with caplog.at_level(logging.INFO, "cutout.inference"):
        engine = create_engine(SHIPPED.model_copy(update={"precision": "int8"}), "u2netp", 320)
    assert engine.precision != "int8"
    assert "u2netp has no INT8 recipe" in caplog.text


@needs_int8
def test_a_stale_int8_network_is_not_used(tmp_path: Path, caplog) -> None:
    models = _models_dir_with_weights(tmp_path)
    shutil.copytree(MODELS_DIR / quantization.INT8_DIR, models / quantization.INT8_DIR)
    settings = Settings(models_dir=models, precision="int8")
    assert create_engine(settings, "isnet", 768).precision == "int8"
    record = quantization.int8_path(settings, "isnet", 768).with_suffix(".json")
    made = json.loads(record.read_text())
    record.write_text(json.dumps({**made, "recipe_version": made["recipe_version"] - 1}))
    with caplog.at_level(logging.INFO, "cutout.inference"):
        engine = create_engine(settings, "isnet", 768)
    assert engine.precision != "int8"
    assert "recipe_version" in caplog.text
    # precision native never reads them.
    assert create_engine(settings.model_copy(update={"precision": "native"}), "isnet", 1024).precision != "int8"


@needs_int8
def test_int8_models_load_a_native_network_for_the_photos_int8_leaves_undecided(caplog) -> None:
    caplog.set_level(logging.INFO, logger="cutout.inference")
    registry = ModelRegistry.load(SHIPPED.model_copy(update={"precision": "int8"}))
    slot = registry.recheck
    assert slot is not None and slot.loaded is None  # at rest: warmed once at start-up, then released
    for name in ("falcon", "aurora"):
        pipeline = registry.get(name)
        assert pipeline is not None and pipeline.spec.int8_recheck_below
        for resolution in pipeline.spec.int8_recheck_below:
            first, native = pipeline._engines[resolution], pipeline._natives[resolution]
            assert isinstance(first, OpenVinoEngine) and first.precision == "int8"
            assert isinstance(native, OnDemandEngine)
            side = int(resolution.split("x")[0])
            with slot.engine(native.key, native._load) as loaded:
                assert isinstance(loaded, OpenVinoEngine) and loaded.precision in ("bf16", "f32")
                loaded.run(np.zeros((1, 3, side, side), np.float32))
                assert slot.resident_bytes > 50 << 20  # IS-Net's weights and activations
    ghost = registry.get("ghost")
    assert ghost is not None and not ghost._natives  # U2-Netp has no INT8 network to recheck
    assert "native too, loaded when a photo INT8 leaves undecided needs it" in caplog.text


@needs_int8
@pytest.mark.timeout(1200)  # two registries with IS-Net at 768 and 1024: minutes on a busy 2-core box
def test_int8_masks_stay_within_iou_098_of_native() -> None:
    """The issue's gate on a few generated photos (composites the recipe did not see), with the
    native recheck of undecided photos (ModelSpec.int8_recheck_below) that makes it hold on the
    benchmark sets (docs/performance.md, INT8)."""
    settings = SHIPPED.only_models(["falcon", "aurora"])
    native = ModelRegistry.load(settings.model_copy(update={"precision": "native"}))
    int8 = ModelRegistry.load(settings)
    images = quantization.calibration_images(len(quantization.CALIBRATION_PHOTOS) * 2 + 3, seed=TEST_SEED)[-3:]
    for name in ("falcon", "aurora"):
        resolution = native.get(name).resolutions[0]
        for rgb in images:
            a, b = native.get(name).mask(rgb, resolution), int8.get(name).mask(rgb, resolution)
            assert _iou(a, b) >= 0.98, (name, resolution, _iou(a, b))


@pytest.mark.slow
@pytest.mark.timeout(1200)  # two quantizations: ~15 s each on a quiet 2-core box, minutes on a busy one
def test_two_runs_of_the_recipe_give_the_same_network_and_masks(tmp_path: Path) -> None:
    """The shipped recipe at a small side (IS-Net at 256, 4 calibration images) to keep it short:
    the same code path as models fetch (quantize, save), twice. The issue asks for masks within
    IoU 0.995 of each other; the recipe gives more: the same bytes. (At 768 too: two runs of
    `models fetch` wrote identical files, docs/performance.md.)"""
    core = ov.Core()
    recipe = quantization.RECIPES["isnet"]
    batches = quantization.calibration_batches(SHIPPED, "isnet", 256, quantization.calibration_images(4))
    made = []
    for run in range(2):
        network = prepare_float_network(core, SHIPPED.weights_path("isnet"), 256, split=False)
        xml = tmp_path / f"run{run}.xml"
        ov.save_model(quantization.quantize(network, batches, recipe), str(xml), compress_to_fp16=False)
        made.append(xml)
    assert made[0].with_suffix(".bin").read_bytes() == made[1].with_suffix(".bin").read_bytes()
    spec = SHIPPED.models["falcon"]
    compiled = [core.compile_model(str(xml), "CPU") for xml in made]
    for rgb in quantization.calibration_images(20, seed=TEST_SEED)[-3:]:
        x = quantization.model_input(rgb, spec, 256)
        a, b = ((m({0: x})[0][0, 0] * 255).astype(np.uint8) for m in compiled)
        assert _iou(a, b) >= 0.995


def test_compiled_networks_are_cached_and_the_cached_ones_give_the_same_output(tmp_path: Path) -> None:
    settings = Settings(models_dir=_models_dir_with_weights(tmp_path))
    batch = np.random.default_rng(0).normal(size=(1, 3, 320, 320)).astype(np.float32)
    first = create_engine(settings, "u2netp", 320).run(batch)
    cache = tmp_path / "models" / COMPILED_CACHE_DIR
    assert any(cache.iterdir())
    again = create_engine(settings, "u2netp", 320).run(batch)
    np.testing.assert_array_equal(first, again)
    off = create_engine(settings.model_copy(update={"compiled_cache": False}), "u2netp", 320).run(batch)
    np.testing.assert_allclose(first, off, atol=1e-6)
