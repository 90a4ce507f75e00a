"""Finishing, called directly on arrays (fast layer, no server): the option table's parser, compositing
(app/imaging/compose.py), the codecs (app/imaging/codec.py) and the render path's finishing.

The cut-out is made here: a photo and a soft-edged disc as its alpha, straight alpha with the colour
under fully transparent pixels zeroed, as the models' pipelines answer it. tests/test_output.py keeps
one end-to-end check per option through uvicorn.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from app.errors import ApiError
from app.imaging import codec, compose
from app.imaging.compose import Finish
from app.removal import options
from app.removal.render import finish_cutout
from harness import png_of, subject_image
from inprocess import InProcess

PHOTO_BYTES = subject_image(160, 120, "PNG")
PHOTO = codec.decode(PHOTO_BYTES).rgb


def _alpha() -> np.ndarray:
    yy, xx = np.mgrid[0:120, 0:160]
    distance = np.hypot((xx - 80) / 45, (yy - 60) / 42)
    return np.clip((1.1 - distance) * 255 / 0.2, 0, 255).astype(np.uint8)


ALPHA = _alpha()
RGBA = np.dstack([PHOTO * (ALPHA != 0)[..., np.newaxis], ALPHA]).astype(np.uint8)


def box_of(alpha: np.ndarray, threshold: int = 10) -> tuple[int, int, int, int]:
    rows = np.flatnonzero((alpha > threshold).any(axis=1))
    cols = np.flatnonzero((alpha > threshold).any(axis=0))
    return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1


def cutout(fields: dict[str, object], background: np.ndarray | None = None) -> np.ndarray:
    chosen = options.parse(fields, None, mask=False)
    opaque = chosen.output_format == "jpeg"
    return compose.cutout(RGBA, PHOTO, chosen.finish, background=background, opaque=opaque).pixels


def test_no_option_changes_nothing() -> None:
    composed = compose.cutout(RGBA, PHOTO, Finish())
    assert np.shares_memory(composed.pixels, RGBA) and np.array_equal(composed.pixels, RGBA), "not even a copy"
    assert composed.mask is None
    finished = finish_cutout(RGBA, PHOTO, options.Options(), 1, True)
    assert finished.body == codec.encode_png(RGBA, 1, True) and (finished.width, finished.height) == (160, 120)


def test_crop_is_the_subjects_box() -> None:
    left, top, right, bottom = box_of(ALPHA)
    assert (right - left, bottom - top) < (150, 115), "the subject is smaller than the photo"
    assert np.array_equal(cutout({"crop_to_bbox": "true"}), RGBA[top:bottom, left:right])
    margin = cutout({"crop_to_bbox": "true", "crop_margin": "5"})
    assert np.array_equal(margin, RGBA[top - 5 : bottom + 5, left - 5 : right + 5])
    percent = cutout({"crop_margin": "10%"})  # a margin asks for the crop
    assert percent.shape[1] == (right - left) + 2 * round((right - left) * 0.1)


def test_jpeg_has_the_background_colour_in_its_corners() -> None:
    for fields, colour in (
        ({}, (255, 255, 255)),
        ({"bg_color": "#1E90FF"}, (30, 144, 255)),
        ({"bg_color": "tomato"}, (255, 99, 71)),
    ):
        pixels = cutout({"output_format": "jpeg", **fields})
        img = png_of(codec.encode(pixels, "jpeg", None, 1, True))
        assert img.format == "JPEG" and img.mode == "RGB" and img.size == (160, 120)
        arr = np.asarray(img).astype(int)
        for corner in (arr[2, 2], arr[2, -3], arr[-3, 2], arr[-3, -3]):
            assert np.abs(corner - colour).max() <= 8, (fields, corner)
        assert np.abs(arr[60, 80] - (150, 30, 40)).max() <= 20, "the subject stays"
    opaque = cutout({"output_format": "jpeg"})
    assert len(codec.encode(opaque, "jpeg", 20, 1, True)) < len(codec.encode(opaque, "jpeg", None, 1, True))


def test_webp_lossless_keeps_the_cutout() -> None:
    img = png_of(codec.encode(RGBA, "webp", None, 1, True))
    assert img.format == "WEBP" and img.mode == "RGBA"
    arr = np.asarray(img)
    assert np.array_equal(arr[..., 3], ALPHA)
    visible = ALPHA > 0
    assert np.array_equal(arr[visible][:, :3], RGBA[visible][:, :3])
    assert png_of(codec.encode(RGBA, "webp", 50, 1, True)).format == "WEBP"


def test_bg_color_composites_over_the_colour() -> None:
    arr = cutout({"bg_color": "#00ff00"})
    assert arr.shape == (120, 160, 3), "an opaque background gives an opaque RGB image"
    a = RGBA[..., 3:4].astype(np.uint16)
    expected = ((RGBA[..., :3] * a + np.array([0, 255, 0], np.uint16) * (255 - a) + 127) // 255).astype(np.uint8)
    assert np.array_equal(arr, expected)
    see_through = cutout({"bg_color": "#0000FF80"})
    assert see_through.shape == (120, 160, 4)
    assert tuple(see_through[2, 2]) == (0, 0, 255, 128) and see_through[60, 80, 3] == 255


def test_bg_blur_keeps_the_subject_sharp() -> None:
    arr = cutout({"bg_blur": "4"})
    assert arr.shape == PHOTO.shape, "opaque"
    solid = ALPHA == 255
    assert solid.sum() > 4000 and np.array_equal(arr[solid], PHOTO[solid]), "the subject is the photo's own pixels"
    corner, original = arr[:20, :20].astype(float), PHOTO[:20, :20].astype(float)
    assert corner.std(axis=(0, 1)).max() < original.std(axis=(0, 1)).min() / 2, "the texture is blurred away"
    assert np.abs(corner.mean(axis=(0, 1)) - original.mean(axis=(0, 1))).max() < 3, "but it is the same background"


def test_bg_image_is_scaled_to_cover() -> None:
    strip = np.zeros((200, 40, 3), np.uint8)  # a tall strip: covering 160x120 means scaling to 160x800
    strip[:, :] = (200, 0, 0)
    strip[:, 20:] = (0, 0, 200)
    arr = cutout({}, background=strip)
    assert arr.shape == (120, 160, 3)
    assert tuple(arr[2, 2]) == (200, 0, 0) and tuple(arr[-3, -3]) == (0, 0, 200)
    assert np.abs(arr[60, 80].astype(int) - (150, 30, 40)).max() <= 12


def test_shadow_falls_below_the_subject() -> None:
    left, top, right, bottom = box_of(ALPHA)
    fields = {"shadow_offset_y": "8", "shadow_offset_x": "0", "shadow_blur": "2", "shadow_opacity": "0.6"}
    arr = cutout(fields)  # a shadow setting asks for the shadow
    middle = (left + right) // 2
    below, above = arr[bottom + 3, middle], arr[top - 3, middle]
    assert below[3] > 80 and above[3] == ALPHA[top - 3, middle] < 20, (below, above)
    assert below[:3].max() < 60, "the shadow is dark"
    on_white = cutout({**fields, "bg_color": "white"})
    assert on_white[bottom + 3, middle].max() < 200 and on_white[top - 3, middle].min() > 240
    defaults = cutout({"shadow": "true"})
    assert defaults[bottom + 2, middle, 3] > ALPHA[bottom + 2, middle]


def test_max_side_downscales_and_never_upscales() -> None:
    assert cutout({"max_side": "80"}).shape == (60, 80, 4)
    assert cutout({"max_side": "1000"}).shape == (120, 160, 4)
    mask = compose.mask(ALPHA, options.parse({"max_side": "40", "crop_to_bbox": "true"}, None, mask=True).finish)
    assert mask.pixels.ndim == 2 and max(mask.pixels.shape) == 40


def test_mask_takes_crop_and_format() -> None:
    chosen = options.parse({"crop_to_bbox": "true", "output_format": "webp"}, None, mask=True)
    composed = compose.mask(ALPHA, chosen.finish)
    img = png_of(codec.encode(composed.pixels, chosen.output_format, chosen.quality, 1, False))
    left, top, right, bottom = box_of(ALPHA)
    assert img.format == "WEBP" and img.size == (right - left, bottom - top)
    with pytest.raises(ApiError, match="bg_color"):
        options.parse({"bg_color": "red"}, None, mask=True)


def test_output_mask_has_the_images_geometry() -> None:
    chosen = options.parse({"output_mask": "true", "crop_to_bbox": "true", "sync_mode": "true"}, None, mask=False)
    finished = finish_cutout(RGBA, PHOTO, chosen, 1, True)
    assert finished.mask is not None
    image, mask = png_of(finished.body), png_of(finished.mask)
    assert image.mode == "RGBA" and mask.mode == "L" and image.size == mask.size == (finished.width, finished.height)
    assert np.array_equal(np.asarray(mask), np.asarray(image)[..., 3])


BAD_VALUES = [
    ({"output_format": "gif"}, "output_format", "png, webp or jpeg"),
    ({"crop_to_bbox": "maybe"}, "crop_to_bbox", "true or false"),
    ({"crop_to_bbox": "true", "crop_margin": "-3"}, "crop_margin", "pixels"),
    ({"crop_to_bbox": "true", "crop_margin": "101%"}, "crop_margin", "percentage"),
    ({"output_format": "jpeg", "quality": "0"}, "quality", "1 to 100"),
    ({"output_format": "webp", "quality": "high"}, "quality", "1 to 100"),
    ({"bg_color": "#12345"}, "bg_color", "hex colour"),
    ({"bg_color": "notacolour"}, "bg_color", "CSS colour name"),
    ({"bg_blur": "201"}, "bg_blur", "0 to 200"),
    ({"bg_blur": "nan"}, "bg_blur", "number"),
    ({"shadow": "true", "shadow_opacity": "2"}, "shadow_opacity", "0 to 1"),
    ({"shadow": "true", "shadow_offset_y": "1.5"}, "shadow_offset_y", "whole number"),
    ({"max_side": "-5"}, "max_side", "0 to 100000"),
    ({"max_side": "100001"}, "max_side", "0 to 100000"),
    # Contradictions say why.
    ({"output_format": "jpeg", "bg_color": "#ff000080"}, "transparency", "opaque"),
    ({"bg_color": "red", "bg_blur": "5"}, "bg_color and bg_blur", "one background"),
    ({"output_mask": "true", "sync_mode": "false"}, "output_mask", "JSON"),
]


@pytest.mark.parametrize(("fields", "field", "accepts"), BAD_VALUES)
def test_bad_values_are_400s_that_name_the_field(fields: dict[str, object], field: str, accepts: str) -> None:
    with pytest.raises(ApiError) as refused:
        options.parse(fields, None, mask=False)
    assert refused.value.status == 400 and refused.value.code == "invalid_parameter"
    assert field in refused.value.message and accepts in refused.value.message


@pytest.mark.parametrize(
    "fields",
    [
        {"crop_to_bbox": "false", "crop_margin": "5"},
        {"shadow": "false", "shadow_blur": "9"},
        {"quality": "80"},
        # 0 is the full size and no blurred background; an empty value is as if left out.
        {"max_side": "0", "bg_blur": "0"},
        {"bg_color": "", "crop_to_bbox": "", "max_side": " ", "sync_mode": ""},
    ],
)
def test_settings_of_a_switched_off_option_are_ignored(fields: dict[str, object]) -> None:
    # A form may send all its fields and toggle one flag: the plain picture, and the plain fingerprint.
    chosen = options.parse(fields, None, mask=False)
    assert chosen == options.Options() and chosen.fingerprint() == ""


@pytest.mark.anyio
async def test_no_option_answers_todays_png_byte_for_byte(fast_app: InProcess) -> None:
    """The one render path with no option: exactly the PNG encoder's bytes of the model's cut-out."""
    key = await fast_app.key()
    response = await fast_app.client.post(
        "/v2/rembg/", headers={"ApiKey": key}, files={"image": ("photo.png", PHOTO_BYTES, "image/png")}
    )
    assert response.status_code == 200 and response.headers["content-type"] == "image/png"
    svc = fast_app.services
    pipeline = svc.registry.get(svc.settings.default_model)
    assert pipeline is not None
    rgba = pipeline.cutout(codec.decode(PHOTO_BYTES))
    assert response.content == codec.encode_png(rgba, svc.settings.png_compress_level, svc.settings.png_fast)
    assert Image.open(io.BytesIO(response.content)).size == (160, 120)
