"""The shipped model bindings, end to end: aurora on IS-Net, operating resolutions and their prices.

The one server here runs config/models.toml as shipped (IS-Net included); every other test
server binds all names to U2-Netp (harness.LEAN_CONFIG_DIR). Small images: IS-Net runs at its
operating resolution whatever the photo's size.
"""

from __future__ import annotations

import numpy as np
import openvino as ov
import pytest
import requests
from PIL import Image

from app.inference import confidence
from app.inference.engine import create_engine
from app.inference.ov_graph import scale_resize_sizes
from app.inference.pipeline import Pipeline
from app.settings import Settings
from harness import MODELS_DIR, LiveServer, assert_error, png_of, subject_image

SHIPPED = Settings(models_dir=MODELS_DIR).models


@pytest.fixture(scope="module")
def server(start_server) -> LiveServer:
    return start_server(isnet=True)


def test_aurora_runs_isnet_end_to_end(server: LiveServer) -> None:
    key = server.create_key(10)
    response = server.remove(key, subject_image(160, 120), model="aurora")
    assert response.status_code == 200, response.text
    assert response.headers["X-Operating-Resolution"] == "1024x1024"
    assert response.headers["X-Credits-Charged"] == str(SHIPPED["aurora"].cost)
    alpha = np.asarray(png_of(response.content).getchannel("A"))
    assert alpha.shape == (120, 160)
    assert alpha[60, 80] > 200 and alpha[3, 3] < 40 and alpha[-3, -3] < 40


def test_every_offered_resolution_runs_and_costs_its_price(server: LiveServer) -> None:
    key = server.create_key(100)
    account = requests.get(server.url + "/v2/account", headers={"ApiKey": key}, timeout=10).json()
    for name, spec in SHIPPED.items():
        listed = account["models"][name]
        assert listed["operating_resolution"] == f"{spec.input_size}x{spec.input_size}"
        assert listed["resolutions"] == {r: p.model_dump() for r, p in spec.prices().items()}
        for resolution, price in spec.prices().items():
            response = server.remove(
                key,
                subject_image(96, 64),
                model=name,
                path="/v2/rembg/mask/",
                fields={"operating_resolution": resolution},
            )
            assert response.status_code == 200, (name, resolution, response.text)
            assert response.headers["X-Operating-Resolution"] == resolution
            assert response.headers["X-Credits-Charged"] == str(price.mask_cost)
            mask = np.asarray(png_of(response.content))
            assert mask.shape == (64, 96) and mask[32, 48] > 200, (name, resolution)


def test_a_resolution_the_model_cannot_run_is_400_naming_what_it_accepts(server: LiveServer) -> None:
    key = server.create_key(5)
    response = server.remove(key, model="ghost", fields={"operating_resolution": "1024x1024"})
    body = assert_error(response, 400, "invalid_parameter")
    assert "320x320" in body["error"]["message"]
    assert server.balance(key) == 5


def test_isnet_graph_runs_only_at_sizes_its_pyramid_divides() -> None:
    core = ov.Core()
    network = core.read_model(str(MODELS_DIR / "isnet.onnx"))
    scale_resize_sizes(network, 768)
    assert network.get_results()[0].get_output_partial_shape(0) == ov.PartialShape([1, 1, 768, 768])
    with pytest.raises(ValueError, match="does not divide"):
        scale_resize_sizes(core.read_model(str(MODELS_DIR / "isnet.onnx")), 700)


def test_int8_recheck_names_one_of_the_models_resolutions() -> None:
    with pytest.raises(ValueError, match="int8_recheck_below '512x512'"):
        Settings(models_dir=MODELS_DIR, models={"aurora": {"int8_recheck_below": {"512x512": 0.9}}})


@pytest.mark.parametrize(
    ("model", "union"),
    [
        ("falcon", "nope"),
        ("falcon", "falcon"),
        ("ghost", "aurora"),
    ],  # unknown, itself, a chain (falcon -> ghost -> aurora)
)
def test_a_union_names_another_model_without_one(model: str, union: str) -> None:
    with pytest.raises(ValueError, match="union names"):
        Settings(models_dir=MODELS_DIR, models={model: {"union": union}})


def test_falcon_keeps_per_pixel_the_larger_of_isnet_and_ghost() -> None:
    """falcon = IS-Net at 768 joined with ghost's mask (scaled to 768): what either network keeps stays."""
    settings = Settings(models_dir=MODELS_DIR)
    ghost_spec, falcon_spec = settings.models["ghost"], settings.models["falcon"]
    assert falcon_spec.union == "ghost"
    # The join alone: its clean-up (undecided regions, black point) is tested in test_confidence.py.
    # Every time: when it is left out (second_view_below) is the next test's.
    falcon_spec = falcon_spec.model_copy(update={"undecided": "keep", "black_point": 0.0, "second_view_below": None})
    ghost = Pipeline("ghost", ghost_spec, {"320x320": create_engine(settings, "u2netp", 320)})
    isnet = {"768x768": create_engine(settings, "isnet", 768)}
    falcon = Pipeline("falcon", falcon_spec, isnet, union=ghost)
    alone = Pipeline("falcon", falcon_spec.model_copy(update={"union": None}), isnet)

    rgb = np.asarray(png_of(subject_image(160, 120, fmt="PNG")).convert("RGB"))
    joined, own = falcon.predict(rgb), alone.predict(rgb)
    theirs = np.asarray(
        Image.fromarray(ghost.predict(rgb).astype(np.float32)).resize((768, 768), Image.Resampling.BILINEAR)
    )
    assert joined.shape == own.shape == (768, 768)
    np.testing.assert_allclose(joined, np.maximum(own, theirs), atol=1e-6)
    assert (theirs > own + 0.1).any(), "on this image ghost must keep something IS-Net drops, or the test shows nothing"
    crisp = confidence.decisiveness(own)
    for below, expected in ((crisp - 0.01, own), (crisp + 0.01, joined)):
        spec = falcon_spec.model_copy(update={"second_view_below": below})
        np.testing.assert_array_equal(Pipeline("falcon", spec, isnet, union=ghost).predict(rgb), expected)


def test_aurora_runs_its_mirror_pass_only_when_the_first_leaves_the_subject_undecided() -> None:
    """second_view_below: a first mask at least that decisive is the answer; below it, the mirror pass
    runs and the per-pixel larger of the two is kept (IS-Net at 768 here: the logic, not the size)."""
    settings = Settings(models_dir=MODELS_DIR)
    spec = settings.models["aurora"]
    assert spec.mirror == "max" and spec.second_view_below is not None
    isnet = {"768x768": create_engine(settings, "isnet", 768)}
    single = Pipeline("aurora", spec.model_copy(update={"mirror": "none"}), isnet)
    always = Pipeline("aurora", spec.model_copy(update={"second_view_below": None}), isnet)
    rgb = np.asarray(png_of(subject_image(160, 120, fmt="PNG")).convert("RGB"))
    first, both = single.predict(rgb), always.predict(rgb)
    assert np.abs(both - first).max() > 0.05, "the mirror pass must change this mask, or the test shows nothing"
    crisp = confidence.decisiveness(first)
    above = Pipeline("aurora", spec.model_copy(update={"second_view_below": crisp - 0.01}), isnet)
    below = Pipeline("aurora", spec.model_copy(update={"second_view_below": crisp + 0.01}), isnet)
    np.testing.assert_array_equal(above.predict(rgb), first)
    np.testing.assert_array_equal(below.predict(rgb), both)


def test_int8_recheck_runs_the_native_engine_where_the_first_mask_is_undecided() -> None:
    """int8_recheck_below routes a photo to the native engine of its resolution when the first
    engine's mask is less decisive than that. Two real networks stand in for INT8 and native here
    (the logic, in every checkout, INT8 networks made or not): U2-Netp as the first, IS-Net at 320 as
    the recheck."""
    settings = Settings(models_dir=MODELS_DIR)
    spec = settings.models["ghost"]
    first = {"320x320": create_engine(settings, "u2netp", 320)}
    recheck = {"320x320": create_engine(settings, "isnet", 320)}
    rgb = np.asarray(png_of(subject_image(160, 120, fmt="PNG")).convert("RGB"))
    own = Pipeline("ghost", spec, first).predict(rgb)
    other = Pipeline("ghost", spec, recheck).predict(rgb)
    assert np.abs(own - other).max() > 0.05, "the two networks must differ here, or the test shows nothing"
    crisp = confidence.decisiveness(own)
    for below, expected in (({"320x320": crisp - 0.01}, own), ({"320x320": crisp + 0.01}, other), ({}, own)):
        routed = Pipeline("ghost", spec.model_copy(update={"int8_recheck_below": below}), first, natives=recheck)
        np.testing.assert_array_equal(routed.predict(rgb), expected)
