"""INT8 networks: post-training quantization (NNCF) of the verified weights, made at setup time.

`python -m app models fetch` runs make_int8() for every (weights file, operating resolution) the
models serve; the service runs them (choose_int8, ov_engine.py) when `precision` is "int8" (the default).
Each INT8 network is an OpenVINO IR in `models_dir/int8/` with a JSON record beside it of what it
was made from: the source weights' sha256, the recipe version, the side. A record that does not
match the verified weights or this RECIPE_VERSION means the IR is stale: `models fetch` makes it
again, and the service runs that network in native precision until then (and says so).

NNCF is heavy (it pulls in scikit-learn, pandas, ...): it lives in the `quantize` extra, installed
by scripts/setup, and is imported only here, only when quantizing. The service never imports it.

Calibration data (calibration_images): photos bundled in the scikit-image wheel (BSD-3-Clause
package; the photos themselves public domain or CC0, named in CALIBRATION_PHOTOS), plus
composites generated from them (a crop of a photo on a CC0 texture, inside a generated shape). No
network access, nothing from outside the declared dependency, nothing committed to this repository.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from app.settings import Settings
from app.specs import ModelSpec, resolution_side

log = logging.getLogger("cutout.inference")

# Bumped whenever anything that changes the INT8 networks changes: the photos, the composites, the
# preprocessing, the NNCF parameters, the graph rewrites before quantization.
RECIPE_VERSION = 1

INT8_DIR = "int8"

# skimage.data functions whose photos are in the wheel (no download), with the licence its docstring states.
CALIBRATION_PHOTOS = {
    "astronaut": "public domain (NASA)",
    "chelsea": "CC0 (Stefan van der Walt)",
    "coffee": "CC0 (Rachel Michetti)",
    "rocket": "public domain (SpaceX)",
    "camera": "CC0 (Lav Varshney)",
    "coins": "no known copyright restrictions",
}
CALIBRATION_TEXTURES = {"brick": "CC0", "grass": "CC0", "gravel": "CC0"}


@dataclass(frozen=True)
class Recipe:
    """NNCF parameters for one weights file. The defaults are the shipped IS-Net recipe; the other
    values are what was tried (docs/performance.md, INT8) and stay selectable for the next try."""

    preset: str = "mixed"  # "mixed": symmetric weights, asymmetric activations; "performance"
    fast_bias_correction: bool = True
    bias_correction: bool = True
    # Convolutions kept in float, counted in the graph's topological order from its input and from
    # its output (the first sees the raw photo, the last ones draw the mask's edges).
    float_first: int = 0
    float_last: int = 0
    # Activation ranges: "minmax" (NNCF's default) or "quantile" (clips rare outliers).
    ranges: str = "minmax"
    calibration_count: int = 24


# IS-Net: NNCF's defaults on the unsplit graph, 24 calibration images. Tried and not better on the
# benchmark photos (network masks against f32 at 768): the split-concat graph (IoU min 0.887),
# float_last=20 (0.759), quantile ranges (0.878, and 8x the time to make), full bias correction
# (the same masks as fast). U2-Netp: NO_RECIPE.
RECIPES: dict[str, Recipe] = {
    "isnet": Recipe(),
}


def recipe_for(weights_name: str) -> Recipe | None:
    """The recipe for these weights, None where they stay in float (no INT8 network made)."""
    return RECIPES.get(weights_name)


def int8_path(settings: Settings, weights_name: str, side: int | None) -> Path:
    stem = Path(settings.weights[weights_name].file).stem
    return settings.models_dir / INT8_DIR / f"{stem}-{side or 'native'}.xml"


def _record_path(xml: Path) -> Path:
    return xml.with_suffix(".json")


def expected_record(settings: Settings, weights_name: str, side: int | None) -> dict[str, object]:
    return {
        "weights": weights_name,
        "source_sha256": settings.weights[weights_name].sha256,
        "recipe_version": RECIPE_VERSION,
        "side": side,
    }


def stale_reason(settings: Settings, weights_name: str, side: int | None) -> str | None:
    """Why the INT8 network for (weights, side) cannot be used as it is; None when it can."""
    xml = int8_path(settings, weights_name, side)
    record_file = _record_path(xml)
    if not xml.is_file() or not xml.with_suffix(".bin").is_file() or not record_file.is_file():
        return f"no INT8 network at {xml} (made by `python -m app models fetch` with the quantize extra)"
    try:
        record = json.loads(record_file.read_text())
    except (OSError, ValueError) as err:
        return f"its record {record_file} is unreadable ({err})"
    expected = expected_record(settings, weights_name, side)
    for key, value in expected.items():
        if record.get(key) != value:
            return f"it was made from {key} {record.get(key)!r}, not {value!r}; run `python -m app models fetch`"
    return None


# --- calibration data ---------------------------------------------------------------------------


def _rgb(image: np.ndarray) -> np.ndarray:
    if image.ndim == 2:
        image = np.stack([image] * 3, axis=-1)
    return np.ascontiguousarray(image[..., :3]).astype(np.uint8)


def calibration_images(count: int = 24, seed: int = 0) -> list[np.ndarray]:
    """RGB uint8 photos: the bundled photos, their mirror images, then generated composites up to
    `count`. Deterministic for a given seed and scikit-image version."""
    from skimage import data  # the quantize extra (scikit-image ships these files in its wheel)

    photos = [_rgb(getattr(data, name)()) for name in CALIBRATION_PHOTOS]
    textures = [_rgb(getattr(data, name)()) for name in CALIBRATION_TEXTURES]
    images = [*photos, *(p[:, ::-1].copy() for p in photos)]
    rng = np.random.default_rng(seed)
    while len(images) < count:
        photo = photos[rng.integers(len(photos))]
        texture = textures[rng.integers(len(textures))]
        height, width = int(rng.integers(360, 900)), int(rng.integers(360, 900))
        background = np.asarray(Image.fromarray(texture).resize((width, height), Image.Resampling.BILINEAR))
        # A subject: a crop of a photo inside an ellipse, placed off-centre.
        ph, pw = photo.shape[:2]
        ch, cw = int(ph * rng.uniform(0.4, 0.9)), int(pw * rng.uniform(0.4, 0.9))
        top, left = int(rng.integers(0, ph - ch + 1)), int(rng.integers(0, pw - cw + 1))
        sh, sw = int(height * rng.uniform(0.4, 0.8)), int(width * rng.uniform(0.3, 0.7))
        subject = np.asarray(Image.fromarray(photo[top : top + ch, left : left + cw]).resize((sw, sh)))
        yy, xx = np.mgrid[0:sh, 0:sw]
        inside = ((yy - sh / 2) / (sh / 2)) ** 2 + ((xx - sw / 2) / (sw / 2)) ** 2 <= 1.0
        oy, ox = int(rng.integers(0, height - sh + 1)), int(rng.integers(0, width - sw + 1))
        out = background.copy()
        region = out[oy : oy + sh, ox : ox + sw]
        region[inside] = subject[inside]
        images.append(out)
    return images[:count]


def model_input(rgb: np.ndarray, spec: ModelSpec, side: int) -> np.ndarray:
    """The 1 x 3 x side x side float32 batch Pipeline.predict hands its engine for this photo
    (the same resize and normalization; tests/test_int8.py checks they agree)."""
    from app.inference.resize import MODEL_INPUT_REDUCING_GAP, resize

    x = resize(rgb, (side, side), Image.Resampling.LANCZOS, MODEL_INPUT_REDUCING_GAP).astype(np.float32)
    if spec.scale == "image_max":
        x *= 1.0 / max(float(x.max()), 1e-6)
    else:
        x *= 1.0 / 255.0
    x -= np.asarray(spec.mean, np.float32)
    x *= 1.0 / np.asarray(spec.std, np.float32)
    return np.ascontiguousarray(x.transpose(2, 0, 1)[np.newaxis])


def calibration_batches(settings: Settings, weights_name: str, side: int, images: list[np.ndarray]) -> list[np.ndarray]:
    """Inputs as every model that runs these weights prepares them (its scaling and normalization),
    at `side`. The photos' mirror images are among the images already (aurora runs them too)."""
    batches: list[np.ndarray] = []
    seen: set[tuple[object, ...]] = set()
    for spec in settings.models.values():
        key = (spec.scale, tuple(spec.mean), tuple(spec.std))
        if spec.weights != weights_name or key in seen:
            continue
        seen.add(key)
        batches += [model_input(rgb, spec, side) for rgb in images]
    return batches


# --- making and loading ---------------------------------------------------------------------------


def served_sides(settings: Settings, weights_name: str) -> list[int]:
    """Every side the models run these weights at."""
    return sorted(
        {resolution_side(r) for spec in settings.models.values() if spec.weights == weights_name for r in spec.prices()}
    )


def float_convolutions(network: Any, recipe: Recipe) -> list[str]:
    """Names of the convolutions the recipe keeps in float."""
    convs = [op.get_friendly_name() for op in network.get_ordered_ops() if op.get_type_name() == "Convolution"]
    return convs[: recipe.float_first] + (convs[-recipe.float_last :] if recipe.float_last else [])


def quantize(network: Any, batches: list[np.ndarray], recipe: Recipe) -> Any:
    """The INT8 ov.Model for a prepared float network (app.inference.ov_graph.prepare_float_network)."""
    import nncf  # the quantize extra
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters
    from nncf.quantization.range_estimator import RangeEstimatorParametersSet

    kwargs: dict[str, Any] = {}
    keep = float_convolutions(network, recipe)
    if keep:
        kwargs["ignored_scope"] = nncf.IgnoredScope(names=keep)
    advanced: dict[str, Any] = {}
    if recipe.ranges == "quantile":
        advanced["activations_range_estimator_params"] = RangeEstimatorParametersSet.MEAN_QUANTILE
    if not recipe.bias_correction:
        advanced["disable_bias_correction"] = True
    if advanced:
        kwargs["advanced_parameters"] = AdvancedQuantizationParameters(**advanced)
    return nncf.quantize(
        network,
        nncf.Dataset(batches),
        preset=nncf.QuantizationPreset.MIXED if recipe.preset == "mixed" else nncf.QuantizationPreset.PERFORMANCE,
        subset_size=len(batches),
        fast_bias_correction=recipe.fast_bias_correction,
        **kwargs,
    )


def _tools() -> dict[str, str]:
    """For the record only (not compared): what made the network."""
    import importlib.metadata

    return {name: importlib.metadata.version(name) for name in ("nncf", "openvino", "scikit-image")}


def make_int8(
    settings: Settings, weights_name: str, side: int, say: Callable[[str], None] = print, force: bool = False
) -> Path | None:
    """Make (or keep, when its record matches) the INT8 network for (weights, side); None where
    these weights have no recipe (they stay in float)."""
    import openvino as ov

    from app.inference.ov_graph import prepare_float_network

    recipe = recipe_for(weights_name)
    if recipe is None:
        return None
    xml = int8_path(settings, weights_name, side)
    if not force and stale_reason(settings, weights_name, side) is None:
        say(f"{weights_name} at {side}: INT8 network {xml} present, made from these weights by recipe {RECIPE_VERSION}")
        return xml
    say(f"{weights_name} at {side}: quantizing to INT8 (recipe {RECIPE_VERSION}) ...")
    core = ov.Core()
    network = prepare_float_network(core, settings.weights_path(weights_name), side, split=False)
    batches = calibration_batches(settings, weights_name, side, calibration_images(recipe.calibration_count))
    quantized = quantize(network, batches, recipe)
    xml.parent.mkdir(parents=True, exist_ok=True)
    # Written under temporary names, then renamed: a replica starting meanwhile sees the old
    # network and record or the new ones, never a half-written file.
    with tempfile.TemporaryDirectory(dir=xml.parent) as tmp:
        tmp_xml = Path(tmp) / xml.name
        ov.save_model(quantized, str(tmp_xml), compress_to_fp16=False)
        record = Path(tmp) / _record_path(xml).name
        made = {**expected_record(settings, weights_name, side), "recipe": asdict(recipe), "tools": _tools()}
        record.write_text(json.dumps(made, indent=2) + "\n")
        _record_path(xml).unlink(missing_ok=True)  # no record = not usable, while the files change
        os.replace(tmp_xml.with_suffix(".bin"), xml.with_suffix(".bin"))
        os.replace(tmp_xml, xml)
        os.replace(record, _record_path(xml))
    say(f"{weights_name} at {side}: INT8 network written to {xml}")
    return xml


def choose_int8(settings: Settings, weights_name: str, side: int | None) -> tuple[Path | None, str]:
    """The INT8 network to run for (weights, side), or None, and why, for the start-up log."""
    if settings.precision == "native":
        return None, "precision native"
    if recipe_for(weights_name) is None:
        return (
            None,
            f"precision int8, but {weights_name} has no INT8 recipe: {NO_RECIPE.get(weights_name, 'none given')}",
        )
    reason = stale_reason(settings, weights_name, side)
    if reason is not None:
        log.warning("%s at %s: running native precision: %s", weights_name, side, reason)
        return None, f"precision int8, but {reason}"
    return int8_path(
        settings, weights_name, side
    ), f"precision int8; made by recipe {RECIPE_VERSION} from these weights"


# Weights that stay in float, and why (the figures: docs/performance.md).
NO_RECIPE: dict[str, str] = {
    "u2netp": "INT8 cannot hold its masks within IoU 0.98 of float (post-training quantization measured "
    "at IoU mean 0.70, min 0.01-0.04 over the benchmark photos; the weights' INT8 rounding alone breaks it)",
}
