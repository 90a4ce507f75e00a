"""Output options (crop, formats, backgrounds, shadow, size, JSON answers), end to end through uvicorn.

One check per option through the server: the option's result is compared with the plain cut-out of
the same photo (the model is deterministic), or with the photo itself. What each option does to the
pixels, every case of it, and every refusal, is tests/test_finishing.py's, on arrays.
"""

from __future__ import annotations

import base64
import io
from typing import Any

import numpy as np
import pytest
import requests
from PIL import Image

from harness import LiveServer, assert_error, png_of, subject_image

PHOTO = subject_image(160, 120, "PNG")  # lossless input: the photo's own pixels are known exactly


def post(
    server: LiveServer,
    key: str,
    data: dict[str, str] | None = None,
    path: str = "/v2/rembg/",
    files: dict[str, Any] | None = None,
    **kwargs: Any,
) -> requests.Response:
    files = {"image": ("photo.png", PHOTO, "image/png"), **(files or {})}
    return requests.post(
        server.url + path,
        headers={"ApiKey": key, **kwargs.pop("headers", {})},
        files=files,
        data={"model": "falcon", **(data or {})},
        timeout=60,
        **kwargs,
    )


def pixels(response: requests.Response) -> np.ndarray:
    assert response.status_code == 200, response.text[:300]
    return np.asarray(png_of(response.content))


@pytest.fixture(scope="module")
def plain(live_server: LiveServer) -> np.ndarray:
    return pixels(post(live_server, live_server.create_key(5)))


def box_of(alpha: np.ndarray, threshold: int = 10) -> tuple[int, int, int, int]:
    rows = np.flatnonzero((alpha > threshold).any(axis=1))
    cols = np.flatnonzero((alpha > threshold).any(axis=0))
    return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1


def test_no_option_answers_the_plain_png(live_server: LiveServer, api_key: str, plain: np.ndarray) -> None:
    response = post(live_server, api_key)
    assert response.headers["content-type"] == "image/png"
    assert np.array_equal(pixels(response), plain) and plain.shape == (120, 160, 4)


def test_crop_is_the_subjects_box(live_server: LiveServer, api_key: str, plain: np.ndarray) -> None:
    left, top, right, bottom = box_of(plain[..., 3])
    assert (right - left, bottom - top) < (150, 115), "the subject is smaller than the photo"
    margin = pixels(post(live_server, api_key, {"crop_to_bbox": "true", "crop_margin": "5"}))
    assert np.array_equal(margin, plain[top - 5 : bottom + 5, left - 5 : right + 5])


def test_jpeg_has_the_background_colour_in_its_corners(live_server: LiveServer, api_key: str) -> None:
    response = post(live_server, api_key, {"output_format": "jpeg", "quality": "85"})
    assert response.headers["content-type"] == "image/jpeg"
    img = png_of(response.content)
    assert img.format == "JPEG" and img.mode == "RGB" and img.size == (160, 120)
    arr = np.asarray(img).astype(int)
    for corner in (arr[2, 2], arr[2, -3], arr[-3, 2], arr[-3, -3]):
        assert np.abs(corner - (255, 255, 255)).max() <= 8, corner
    assert np.abs(arr[60, 80] - (150, 30, 40)).max() <= 20, "the subject stays"


def test_webp_lossless_keeps_the_cutout(live_server: LiveServer, api_key: str, plain: np.ndarray) -> None:
    response = post(live_server, api_key, {"output_format": "webp"})
    assert response.headers["content-type"] == "image/webp"
    img = png_of(response.content)
    assert img.format == "WEBP" and img.mode == "RGBA"
    arr = np.asarray(img)
    assert np.array_equal(arr[..., 3], plain[..., 3])
    visible = plain[..., 3] > 0
    assert np.array_equal(arr[visible][:, :3], plain[visible][:, :3])


def test_bg_color_composites_over_the_colour(live_server: LiveServer, api_key: str, plain: np.ndarray) -> None:
    arr = pixels(post(live_server, api_key, {"bg_color": "#00ff00"}))
    assert arr.shape == (120, 160, 3), "an opaque background gives an opaque RGB image"
    a = plain[..., 3:4].astype(np.uint16)
    expected = ((plain[..., :3] * a + np.array([0, 255, 0], np.uint16) * (255 - a) + 127) // 255).astype(np.uint8)
    assert np.array_equal(arr, expected)


def test_bg_blur_keeps_the_subject_sharp(live_server: LiveServer, api_key: str, plain: np.ndarray) -> None:
    arr = pixels(post(live_server, api_key, {"bg_blur": "4"}))
    photo = np.asarray(Image.open(io.BytesIO(PHOTO)).convert("RGB"))
    assert arr.shape == photo.shape, "opaque"
    solid = plain[..., 3] == 255
    assert solid.sum() > 4000 and np.array_equal(arr[solid], photo[solid]), "the subject is the photo's own pixels"
    corner, original = arr[:20, :20].astype(float), photo[:20, :20].astype(float)
    assert corner.std(axis=(0, 1)).max() < original.std(axis=(0, 1)).min() / 2, (
        "the background's texture is blurred away"
    )
    assert np.abs(corner.mean(axis=(0, 1)) - original.mean(axis=(0, 1))).max() < 3, "but it is the same background"


def test_bg_image_is_scaled_to_cover(live_server: LiveServer, api_key: str) -> None:
    bg = np.zeros((200, 40, 3), np.uint8)  # a tall strip: covering 160x120 means scaling to 160x800
    bg[:, :] = (200, 0, 0)
    bg[:, 20:] = (0, 0, 200)
    buf = io.BytesIO()
    Image.fromarray(bg).save(buf, "PNG")
    arr = pixels(post(live_server, api_key, files={"bg_image": ("bg.png", buf.getvalue(), "image/png")}))
    assert arr.shape == (120, 160, 3)
    assert tuple(arr[2, 2]) == (200, 0, 0) and tuple(arr[-3, -3]) == (0, 0, 200)
    assert np.abs(arr[60, 80].astype(int) - (150, 30, 40)).max() <= 12


def test_shadow_falls_below_the_subject(live_server: LiveServer, api_key: str, plain: np.ndarray) -> None:
    left, top, right, bottom = box_of(plain[..., 3])
    data = {"shadow_offset_y": "8", "shadow_offset_x": "0", "shadow_blur": "2", "shadow_opacity": "0.6"}
    arr = pixels(post(live_server, api_key, data))  # a shadow setting asks for the shadow
    middle = (left + right) // 2
    below, above = arr[bottom + 3, middle], arr[top - 3, middle]
    assert below[3] > 80 and above[3] == plain[top - 3, middle, 3] < 20, (below, above)
    assert below[:3].max() < 60, "the shadow is dark"


def test_max_side_downscales_and_never_upscales(live_server: LiveServer, api_key: str) -> None:
    assert pixels(post(live_server, api_key, {"max_side": "80"})).shape == (60, 80, 4)


def test_mask_takes_crop_and_format(live_server: LiveServer, api_key: str, plain: np.ndarray) -> None:
    response = post(live_server, api_key, {"crop_to_bbox": "true", "output_format": "webp"}, path="/v2/rembg/mask/")
    assert response.headers["content-type"] == "image/webp"
    left, top, right, bottom = box_of(plain[..., 3])
    assert png_of(response.content).size == (right - left, bottom - top)


def _decode_file(entry: dict[str, Any]) -> Image.Image:
    header, _, payload = entry["url"].partition(",")
    assert header == f"data:{entry['content_type']};base64"
    data = base64.b64decode(payload)
    assert len(data) == entry["file_size"]
    img = png_of(data)
    assert img.size == (entry["width"], entry["height"])
    return img


def test_json_answer_with_mask(live_server: LiveServer, api_key: str, plain: np.ndarray) -> None:
    response = post(
        live_server, api_key, {"output_mask": "true", "crop_to_bbox": "true"}, headers={"Accept": "application/json"}
    )
    assert response.status_code == 200 and response.headers["content-type"] == "application/json"
    body = response.json()
    assert set(body) == {"image", "mask", "confidence"}
    assert set(body["image"]) == {"url", "content_type", "file_name", "file_size", "width", "height"}
    assert body["image"]["file_name"] == "cutout.png" and body["mask"]["file_name"] == "mask.png"
    image, mask = _decode_file(body["image"]), _decode_file(body["mask"])
    assert image.mode == "RGBA" and mask.mode == "L" and image.size == mask.size
    assert np.array_equal(np.asarray(mask), np.asarray(image)[..., 3])
    assert response.headers["X-Credits-Charged"] == "1"


def test_json_body_with_data_uri(live_server: LiveServer, api_key: str, plain: np.ndarray) -> None:
    uri = "data:image/png;base64," + base64.b64encode(PHOTO).decode()
    url = live_server.url + "/v2/rembg/"
    headers = {"ApiKey": api_key}
    answer = requests.post(
        url, json={"image_data_uri": uri, "model": "falcon", "sync_mode": True}, headers=headers, timeout=60
    )
    assert answer.status_code == 200, answer.text
    entry = answer.json()["image"]
    assert entry["content_type"] == "image/png" and (entry["width"], entry["height"]) == (160, 120)
    assert np.array_equal(np.asarray(_decode_file(entry)), plain)
    raw = requests.post(
        url, json={"image_data_uri": uri, "output_format": "jpeg", "bg_color": "black"}, headers=headers, timeout=60
    )
    assert raw.headers["content-type"] == "image/jpeg" and png_of(raw.content).size == (160, 120)
    cropped = requests.post(
        url,
        json={"image_data_uri": uri, "crop_to_bbox": True, "crop_margin": 2, "sync_mode": True},
        headers=headers,
        timeout=60,
    ).json()["image"]
    left, top, right, bottom = box_of(plain[..., 3])
    assert (cropped["width"], cropped["height"]) == (right - left + 4, bottom - top + 4)
    bad = [
        ({"image_data_uri": "not a data uri"}, "invalid_image"),
        ({"image_data_uri": "data:image/png;base64,@@@"}, "invalid_image"),
        ({"image_data_uri": uri, "image_url": "http://example.invalid/a.png"}, "invalid_parameter"),
        ({"image_data_uri": uri, "size": "huge"}, "invalid_parameter"),  # remove.bg's size: no such value
        ({"image_data_uri": uri, "dimensions": "full"}, "invalid_parameter"),
        ({"image_data_uri": uri, "crop_to_bbox": "maybe"}, "invalid_parameter"),
        ({"image_data_uri": uri, "model": 3}, "invalid_parameter"),
    ]
    for payload, code in bad:
        assert_error(requests.post(url, json=payload, headers=headers, timeout=60), 400, code)
    assert_error(
        requests.post(url, data=b"{nope", headers={**headers, "Content-Type": "application/json"}, timeout=60),
        400,
        "invalid_parameter",
    )


def test_a_bad_value_is_a_400_that_names_the_field_and_charges_nothing(live_server: LiveServer) -> None:
    key = live_server.create_key(10)
    body = assert_error(post(live_server, key, {"bg_blur": "201"}), 400, "invalid_parameter")
    assert "bg_blur" in body["error"]["message"] and "0 to 200" in body["error"]["message"]
    body = assert_error(
        post(live_server, key, files={"bg_image": ("bg.png", b"not an image", "image/png")}), 400, "invalid_image"
    )
    assert "bg_image" in body["error"]["message"]
    assert_error(post(live_server, key, {"bg_image": "text"}), 400, "invalid_parameter")
    assert live_server.balance(key) == 10


def test_settings_of_a_switched_off_option_are_ignored(live_server: LiveServer, api_key: str) -> None:
    # A form may send all its fields and toggle one flag: the plain PNG, byte for byte.
    plain = post(live_server, api_key)
    response = post(live_server, api_key, {"shadow": "false", "shadow_blur": "9"})
    assert response.headers["content-type"] == "image/png" and response.content == plain.content


def test_idempotency_key_covers_the_options(live_server: LiveServer, api_key: str) -> None:
    headers = {"Idempotency-Key": "output-options-1"}
    first = post(live_server, api_key, {"bg_color": "red"}, headers=headers)
    assert first.status_code == 200 and first.headers["X-Credits-Charged"] == "1"
    again = post(live_server, api_key, {"bg_color": "red"}, headers=headers)
    assert again.headers["X-Credits-Charged"] == "0" and again.content == first.content
    assert_error(post(live_server, api_key, {"bg_color": "blue"}, headers=headers), 422, "idempotency_key_reused")
