"""Callers of remove.bg, PhotoRoom and fal keep their names: authentication headers, field aliases,
result headers, through a real uvicorn."""

from __future__ import annotations

import base64

import pytest
import requests

from harness import LiveServer, assert_error, png_of, subject_image


@pytest.mark.parametrize("header", ["Key {key}", "key {key}", "Bearer {key}"])
def test_authorization_key_as_fal_sends_it(live_server: LiveServer, api_key: str, header: str) -> None:
    response = live_server.remove(None, subject_image(), "ghost", headers={"Authorization": header.format(key=api_key)})
    assert response.status_code == 200, response.text
    assert response.headers["X-Credits-Remaining"] == "99"


def test_authorization_key_with_a_wrong_key_is_refused(live_server: LiveServer) -> None:
    wrong = live_server.remove(None, subject_image(), "ghost", headers={"Authorization": "Key co_not-a-key"})
    assert_error(wrong, 401, "invalid_api_key")
    missing = live_server.remove(None, subject_image(), "ghost", headers={"Authorization": "Basic dXNlcjpwdw=="})
    body = assert_error(missing, 401, "invalid_api_key")
    assert "Authorization: Key <key>" in body["error"]["message"]


# --- forgiving flags, did you mean ------------------------------------------------------------------


@pytest.mark.parametrize("word", ["true", "True", "TRUE", "1", "yes", "Yes", "on", "ON"])
def test_a_flag_is_true_in_any_spelling(live_server: LiveServer, api_key: str, word: str) -> None:
    response = live_server.remove(api_key, subject_image(400, 300), "ghost", fields={"crop_to_bbox": word})
    assert response.status_code == 200, response.text
    assert "X-Foreground-Left" in response.headers and png_of(response.content).size != (400, 300)


@pytest.mark.parametrize("word", ["false", "False", "FALSE", "0", "no", "No", "off", "OFF", ""])
def test_a_flag_is_false_in_any_spelling_and_empty(live_server: LiveServer, api_key: str, word: str) -> None:
    response = live_server.remove(api_key, subject_image(400, 300), "ghost", fields={"crop_to_bbox": word})
    assert response.status_code == 200, response.text
    assert png_of(response.content).size == (400, 300)


def test_json_flags_take_1_and_0_and_words(live_server: LiveServer, api_key: str) -> None:
    uri = "data:image/jpeg;base64," + base64.b64encode(subject_image(400, 300)).decode()
    for value, cropped in [(1, True), (0, False), ("Yes", True), ("", False), (True, True)]:
        response = post_json(live_server, api_key, {"image_data_uri": uri, "model": "ghost", "crop_to_bbox": value})
        assert response.status_code == 200, (value, response.text)
        assert (png_of(response.content).size != (400, 300)) == cropped, value
    body = assert_error(
        post_json(live_server, api_key, {"image_data_uri": uri, "crop_to_bbox": 2}), 400, "invalid_parameter"
    )
    assert "crop_to_bbox" in body["error"]["message"]


def test_php_sends_every_field_of_a_form_empty_or_false(live_server: LiveServer, api_key: str) -> None:
    """PHP's http_build_query writes false as "": a form with every field, the unused ones empty."""
    fields = {"crop_to_bbox": "", "shadow": "", "bg_color": "", "bg_blur": "", "max_side": "", "sync_mode": ""}
    response = live_server.remove(api_key, subject_image(400, 300), "ghost", fields=fields)
    assert response.status_code == 200 and response.headers["content-type"] == "image/png", response.text
    assert png_of(response.content).size == (400, 300)


@pytest.mark.parametrize(
    ("sent", "suggested"),
    [("crop_to_box", "crop_to_bbox"), ("bgcolor", "bg_color"), ("output_fromat", "output_format"), ("shadw", "shadow")],
)
def test_an_unknown_field_close_to_ours_is_answered_with_did_you_mean(
    live_server: LiveServer, api_key: str, sent: str, suggested: str
) -> None:
    body = assert_error(
        live_server.remove(api_key, subject_image(), "ghost", fields={sent: "x"}), 400, "invalid_parameter"
    )
    assert f"{sent!r} (did you mean {suggested!r}?)" in body["error"]["message"], body
    uri = "data:image/jpeg;base64," + base64.b64encode(subject_image()).decode()
    body = assert_error(post_json(live_server, api_key, {"image_data_uri": uri, sent: "x"}), 400, "invalid_parameter")
    assert f"did you mean {suggested!r}?" in body["error"]["message"], body


def test_an_unknown_field_far_from_ours_gets_no_guess(live_server: LiveServer, api_key: str) -> None:
    body = assert_error(
        live_server.remove(api_key, subject_image(), "ghost", fields={"zzzz": "1"}), 400, "invalid_parameter"
    )
    assert "'zzzz'" in body["error"]["message"] and "did you mean" not in body["error"]["message"]


def test_a_misnamed_photo_part_is_named(live_server: LiveServer, api_key: str) -> None:
    response = requests.post(
        live_server.url + "/v2/rembg/",
        headers={"ApiKey": api_key},
        files={"imgae": ("photo.jpg", subject_image(), "image/jpeg")},
        timeout=60,
    )
    body = assert_error(response, 400, "invalid_image")
    assert "did you mean 'image'?" in body["error"]["message"]


# --- remove.bg's and PhotoRoom's names --------------------------------------------------------------


def post_json(server: LiveServer, key: str, body: dict[str, object]) -> requests.Response:
    return requests.post(server.url + "/v2/rembg/", headers={"ApiKey": key}, json=body, timeout=60)


def post_removebg(
    server: LiveServer, key: str, fields: dict[str, str], image: bytes | None = None
) -> requests.Response:
    files = {"image_file": ("photo.jpg", image or subject_image(400, 300), "image/jpeg")}
    return requests.post(
        server.url + "/v2/rembg/",
        headers={"X-Api-Key": key},
        files=files,
        data={"model": "ghost", **fields},
        timeout=60,
    )


def test_removebg_names_give_what_ours_give(live_server: LiveServer, api_key: str) -> None:
    cases = [
        (
            {"crop": "true", "format": "jpg", "bg_color": "81d4fa"},
            {"crop_to_bbox": "true", "output_format": "jpeg", "bg_color": "81d4fa"},
        ),
        ({"size": "preview"}, {"max_side": "625"}),
        ({"size": "full", "format": "auto"}, {}),
        (
            {"add_shadow": "true", "crop": "true", "crop_margin": "10%"},
            {"shadow": "true", "crop_to_bbox": "true", "crop_margin": "10%"},
        ),
        ({"channels": "rgba"}, {}),
    ]
    image = subject_image(1200, 900)
    for theirs, ours in cases:
        got = post_removebg(live_server, api_key, theirs, image)
        expected = live_server.remove(api_key, image, "ghost", fields=ours)
        assert got.status_code == 200 and expected.status_code == 200, (theirs, got.text)
        assert got.headers["content-type"] == expected.headers["content-type"], theirs
        assert got.content == expected.content, theirs
        for header in ("X-Width", "X-Height", "X-Foreground-Left", "X-Foreground-Top"):
            assert got.headers.get(header) == expected.headers.get(header), (theirs, header)
    assert png_of(post_removebg(live_server, api_key, {"size": "preview"}, image).content).size == (625, 469)


def test_channels_alpha_answers_the_mask(live_server: LiveServer, api_key: str) -> None:
    image = subject_image(400, 300)
    alpha = post_removebg(live_server, api_key, {"channels": "alpha"}, image)
    mask = live_server.remove(api_key, image, "ghost", path="/v2/rembg/mask/")
    assert alpha.status_code == 200 and png_of(alpha.content).mode == "L"
    assert alpha.content == mask.content and alpha.headers["X-Credits-Charged"] == mask.headers["X-Credits-Charged"]
    refused = live_server.remove(api_key, image, "ghost", path="/v2/rembg/mask/", fields={"channels": "rgba"})
    assert "POST /v2/rembg/" in assert_error(refused, 400, "invalid_parameter")["error"]["message"]


def test_an_alias_with_its_field_or_a_value_it_lacks_is_a_400(live_server: LiveServer, api_key: str) -> None:
    body = assert_error(
        post_removebg(live_server, api_key, {"crop": "true", "crop_to_bbox": "true"}), 400, "invalid_parameter"
    )
    assert "'crop' or 'crop_to_bbox'" in body["error"]["message"]
    body = assert_error(post_removebg(live_server, api_key, {"size": "huge"}), 400, "invalid_parameter")
    assert "size accepts preview" in body["error"]["message"]
    body = assert_error(post_removebg(live_server, api_key, {"channels": "rgb"}), 400, "invalid_parameter")
    assert "channels accepts rgba, alpha" in body["error"]["message"]
    body = assert_error(post_removebg(live_server, api_key, {"format": "zip"}), 400, "invalid_parameter")
    assert "png, webp or jpeg" in body["error"]["message"]


def test_image_file_b64_is_plain_base64_in_a_json_body(live_server: LiveServer, api_key: str) -> None:
    image = subject_image(400, 300)
    plain = base64.b64encode(image).decode()
    got = requests.post(
        live_server.url + "/v2/rembg/",
        headers={"X-Api-Key": api_key},
        json={"image_file_b64": plain, "model": "ghost", "crop": True},
        timeout=60,
    )
    expected = live_server.remove(api_key, image, "ghost", fields={"crop_to_bbox": "true"})
    assert got.status_code == 200 and got.content == expected.content, got.text
    bad = requests.post(
        live_server.url + "/v2/rembg/", headers={"ApiKey": api_key}, json={"image_file_b64": "not base64!"}, timeout=60
    )
    assert "image_file_b64" in assert_error(bad, 400, "invalid_image")["error"]["message"]


def test_bg_image_file_is_bg_image(live_server: LiveServer, api_key: str) -> None:
    image, background = subject_image(400, 300), subject_image(300, 200, mode="RGB")
    got = requests.post(
        live_server.url + "/v2/rembg/",
        headers={"ApiKey": api_key},
        files={"image_file": ("p.jpg", image, "image/jpeg"), "bg_image_file": ("b.jpg", background, "image/jpeg")},
        data={"model": "ghost"},
        timeout=60,
    )
    expected = requests.post(
        live_server.url + "/v2/rembg/",
        headers={"ApiKey": api_key},
        files={"image": ("p.jpg", image, "image/jpeg"), "bg_image": ("b.jpg", background, "image/jpeg")},
        data={"model": "ghost"},
        timeout=60,
    )
    assert got.status_code == 200 and got.content == expected.content, got.text


def test_refine_foreground_switches_the_colour_estimate(live_server: LiveServer, api_key: str) -> None:
    image = subject_image(400, 300)
    plain = live_server.remove(api_key, image, "ghost")
    refined = live_server.remove(api_key, image, "ghost", fields={"refine_foreground": "true"})
    off = live_server.remove(api_key, image, "ghost", fields={"refine_foreground": "false"})
    assert plain.status_code == refined.status_code == off.status_code == 200, refined.text
    # ghost's own step is the fast estimate (estimate_fast); true asks for the full one, false for none.
    assert len({plain.content, refined.content, off.content}) == 3, "each setting changes the edge colours"
    alphas = {png_of(answer.content).getchannel("A").tobytes() for answer in (plain, refined, off)}
    assert len(alphas) == 1, "the colour step never changes the mask"
