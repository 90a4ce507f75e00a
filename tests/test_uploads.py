"""What real clients send (formats, modes, orientation), the form contract, limits, CORS, OpenAPI."""

from __future__ import annotations

import io
import os
import re
import struct
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pillow_heif
import pytest
import requests
from PIL import Image, ImageCms

from app.imaging import codec
from harness import LiveServer, assert_error, png_of, raw_request, subject_image

pillow_heif.register_heif_opener()  # lets the tests write HEIC

SUBJECT_RGB = (150, 30, 40)  # subject_image's disc colour
LIMITS = {"max_body_bytes": 200_000, "max_side": 400, "max_pixels": 60_000}


@pytest.fixture(scope="module")
def limited_server(start_server: Callable[..., LiveServer]) -> LiveServer:
    """Small limits and short upload timeouts, one allowed browser origin."""
    return start_server(
        CUTOUT_MAX_BODY_BYTES=str(LIMITS["max_body_bytes"]),
        CUTOUT_MAX_SIDE=str(LIMITS["max_side"]),
        CUTOUT_MAX_PIXELS=str(LIMITS["max_pixels"]),
        CUTOUT_BODY_TIMEOUT_S="1",
        CUTOUT_BODY_DEADLINE_S="3",
        CUTOUT_CORS_ORIGINS='["https://shop.example"]',
    )


def post_form(server: LiveServer, key: str, headers: dict[str, str] | None = None, **kwargs: Any) -> requests.Response:
    return requests.post(server.url + "/v2/rembg/", headers={"ApiKey": key, **(headers or {})}, timeout=60, **kwargs)


def assert_cutout(response: requests.Response, size: tuple[int, int]) -> np.ndarray:
    assert response.status_code == 200, response.text[:300]
    cutout = png_of(response.content)
    assert cutout.mode == "RGBA" and cutout.size == size
    return np.asarray(cutout)


# --- formats and modes -------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF", "HEIF", "AVIF"])
def test_every_client_format_is_cut_out(live_server: LiveServer, api_key: str, fmt: str) -> None:
    pixels = assert_cutout(live_server.remove(api_key, subject_image(160, 120, fmt), model="ghost"), (160, 120))
    assert pixels[60, 80, 3] > 200 and pixels[3, 3, 3] < 40
    assert np.abs(pixels[60, 80, :3].astype(int) - SUBJECT_RGB).max() < 30, "the subject keeps its colour"


def _sixteen_bit_png() -> bytes:
    gray = np.asarray(Image.open(io.BytesIO(subject_image(160, 120, "PNG", "L"))), np.uint16) * 257
    buf = io.BytesIO()
    Image.fromarray(gray).save(buf, "PNG")
    return buf.getvalue()


def _gif_first_frame_is_the_subject() -> bytes:
    first = Image.open(io.BytesIO(subject_image(160, 120, "PNG")))
    blank = Image.new("RGB", (160, 120), (235, 235, 228))
    buf = io.BytesIO()
    first.save(buf, "GIF", save_all=True, append_images=[blank, blank], duration=100, loop=0)
    return buf.getvalue()


SRGB_ICC = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()

MODES: dict[str, Callable[[], bytes]] = {
    "grayscale": lambda: subject_image(160, 120, "PNG", "L"),
    "palette": lambda: subject_image(160, 120, "PNG", "P"),
    "cmyk-jpeg": lambda: subject_image(160, 120, "JPEG", "CMYK"),
    "cmyk-tiff": lambda: subject_image(160, 120, "TIFF", "CMYK"),
    "16-bit-gray": _sixteen_bit_png,
    "srgb-icc": lambda: subject_image(160, 120, "JPEG", icc_profile=SRGB_ICC),
    "broken-icc": lambda: subject_image(160, 120, "JPEG", icc_profile=b"not a profile" * 10),
    "animated-gif": _gif_first_frame_is_the_subject,
    "multipage-tiff": lambda: subject_image(160, 120, "TIFF", save_all=True, append_images=[Image.new("RGB", (9, 9))]),
    "progressive-jpeg": lambda: subject_image(160, 120, "JPEG", progressive=True),
}


@pytest.mark.parametrize("kind", MODES)
def test_every_pixel_mode_is_cut_out(live_server: LiveServer, api_key: str, kind: str) -> None:
    pixels = assert_cutout(live_server.remove(api_key, MODES[kind](), model="ghost"), (160, 120))
    assert pixels[60, 80, 3] > 200 and pixels[3, 3, 3] < 40
    if kind in ("cmyk-jpeg", "cmyk-tiff", "srgb-icc", "broken-icc", "palette", "animated-gif"):
        assert np.abs(pixels[60, 80, :3].astype(int) - SUBJECT_RGB).max() < 40, pixels[60, 80]


# Display P3's red primary (D50): a profile with it is a valid RGB profile that is not sRGB.
P3_RED_XYZ = (0.5151, 0.2412, -0.0011)


def _with_red_primary(profile: bytes, xyz: tuple[float, float, float]) -> bytes:
    count = int.from_bytes(profile[128:132], "big")
    for i in range(count):
        signature, offset, _size = struct.unpack(">4sII", profile[132 + 12 * i : 144 + 12 * i])
        if signature == b"rXYZ":  # 'XYZ ', 4 reserved bytes, then X Y Z as s15Fixed16
            values = b"".join(struct.pack(">i", round(v * 65536)) for v in xyz)
            return profile[: offset + 8] + values + profile[offset + 20 :]
    raise AssertionError("the sRGB profile has no rXYZ tag")


def test_srgb_profiles_are_not_applied_and_other_profiles_are() -> None:
    # decode() is the unit here: the skip is a speed lever, so the pixels must say it changed nothing.
    plain = codec.decode(subject_image(160, 120, "JPEG")).rgb
    tagged_srgb = codec.decode(subject_image(160, 120, "JPEG", icc_profile=SRGB_ICC)).rgb
    np.testing.assert_array_equal(tagged_srgb, plain)
    wide_red = _with_red_primary(SRGB_ICC, P3_RED_XYZ)
    converted = codec.decode(subject_image(160, 120, "JPEG", icc_profile=wide_red)).rgb
    assert np.abs(converted.astype(int) - plain).max() > 10, "a non-sRGB profile must still be applied"
    assert codec._is_srgb(SRGB_ICC) and not codec._is_srgb(wide_red)
    # A vendor's sRGB with its own rounding of the primaries is still sRGB; junk is not.
    assert codec._is_srgb(_with_red_primary(SRGB_ICC, (0.4361, 0.2225, 0.0139)))
    assert not codec._is_srgb(b"not a profile" * 10)
    assert not codec._is_srgb(b"x" * 70_000), "oversized profiles are never taken for sRGB (nor cached)"


def test_transparent_pixels_of_the_upload_stay_transparent(live_server: LiveServer, api_key: str) -> None:
    img = Image.open(io.BytesIO(subject_image(160, 120, "PNG"))).convert("RGBA")
    img.putalpha(Image.new("L", (160, 120), 255))
    img.paste((0, 0, 0, 0), (100, 0, 160, 120))  # right side cut away by the client already
    buf = io.BytesIO()
    img.save(buf, "PNG")
    pixels = assert_cutout(live_server.remove(api_key, buf.getvalue(), model="ghost"), (160, 120))
    assert pixels[60, 80, 3] > 200
    assert pixels[:, 100:, 3].max() == 0


# EXIF orientation -> how the stored pixels relate to the upright picture.
ORIENTATIONS = {
    3: Image.Transpose.ROTATE_180,
    6: Image.Transpose.ROTATE_90,  # stored turned left; viewers turn it right
    8: Image.Transpose.ROTATE_270,
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    5: Image.Transpose.TRANSPOSE,
}


@pytest.mark.parametrize("orientation", ORIENTATIONS)
@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP"])
def test_exif_orientation_is_applied(live_server: LiveServer, api_key: str, orientation: int, fmt: str) -> None:
    # Upright: 120 wide, 200 high, the subject in the top half only.
    upright = np.full((200, 120, 3), (235, 235, 228), np.uint8)
    yy, xx = np.mgrid[0:200, 0:120]
    upright[((xx - 60) / 35) ** 2 + ((yy - 55) / 40) ** 2 <= 1] = SUBJECT_RGB
    stored = Image.fromarray(upright).transpose(ORIENTATIONS[orientation])
    exif = Image.Exif()
    exif[0x0112] = orientation
    buf = io.BytesIO()
    stored.save(buf, fmt, exif=exif.tobytes())

    response = live_server.remove(api_key, buf.getvalue(), model="ghost", path="/v2/rembg/mask/")
    assert response.status_code == 200, response.text
    mask = np.asarray(png_of(response.content))
    assert mask.shape == (200, 120), "the output has the displayed size"
    assert mask[55, 60] > 200, "the subject is where the viewer sees it"
    assert mask[150, 60] < 40


# --- the form ------------------------------------------------------------------------------------


def test_forms_that_say_what_to_send(live_server: LiveServer, api_key: str) -> None:
    image = subject_image(64, 48)
    cases: list[tuple[dict[str, Any], int, str]] = [
        ({"files": {"photo": ("a.jpg", image)}}, 400, "invalid_image"),  # wrong part name
        ({"data": {"model": "ghost"}}, 400, "invalid_image"),  # no file at all
        ({"data": {"image": "aGVsbG8="}}, 400, "invalid_image"),  # image as a short text field
        ({"data": {"image": "x" * 5000}, "files": {"f": ("a", b"")}}, 400, "invalid_parameter"),  # oversized field
        ({"files": {"image": ("a.jpg", image), "image2": ("b.jpg", image)}}, 400, "invalid_parameter"),
        ({"files": [("image", ("a.jpg", image)), ("image", ("b.jpg", image))]}, 400, "invalid_parameter"),
        ({"files": {"image": ("a.jpg", image)}, "data": {"dimensions": "full"}}, 400, "invalid_parameter"),
        ({"files": {"image": ("a.jpg", image)}, "data": {"model": ["ghost", "falcon"]}}, 400, "invalid_parameter"),
        ({"json": {"image": "aGVsbG8="}}, 400, "invalid_image"),  # not multipart
        ({"data": b"image=abc", "headers": {"Content-Type": "text/plain"}}, 400, "invalid_image"),
        (
            {"data": b"--x\r\n", "headers": {"Content-Type": "multipart/form-data"}},
            400,
            "invalid_parameter",
        ),  # no boundary
        (
            {"data": b"garbage", "headers": {"Content-Type": "multipart/form-data; boundary=x"}},
            400,
            "invalid_parameter",
        ),  # not multipart inside
    ]
    for kwargs, status, code in cases:
        body = assert_error(post_form(live_server, api_key, **kwargs), status, code)
        assert '"image"' in body["error"]["message"], (kwargs.keys(), body)
    assert live_server.balance(api_key) == 100


def test_form_messages_name_the_problem(live_server: LiveServer, api_key: str) -> None:
    image = subject_image(64, 48)
    message = assert_error(post_form(live_server, api_key, files={"file": ("a.jpg", image)}), 400, "invalid_image")
    assert "'file'" in message["error"]["message"]
    message = assert_error(
        post_form(live_server, api_key, files={"image": ("a.jpg", image)}, data={"dimensions": "full"}),
        400,
        "invalid_parameter",
    )
    assert "'dimensions'" in message["error"]["message"]
    message = assert_error(post_form(live_server, api_key, json={}), 400, "invalid_image")
    assert "multipart/form-data" in message["error"]["message"] and "application/json" in message["error"]["message"]


def test_image_part_without_content_type_or_odd_filename_is_sniffed(live_server: LiveServer, api_key: str) -> None:
    # PHP and mobile clients send any filename and content type: only the bytes count.
    png = subject_image(64, 48, "PNG")
    response = post_form(live_server, api_key, files={"image": ("photo.jpg", png, "application/octet-stream")})
    assert_cutout(response, (64, 48))
    response = post_form(live_server, api_key, files={"image": ("", png)})
    assert_cutout(response, (64, 48))


def test_empty_file_and_text_renamed(live_server: LiveServer, api_key: str) -> None:
    body = assert_error(live_server.remove(api_key, b""), 400, "invalid_image")
    assert "empty" in body["error"]["message"]
    body = assert_error(
        live_server.remove(api_key, b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n"), 400, "invalid_image"
    )
    assert "JPEG" in body["error"]["message"], "the message lists what to send"
    assert live_server.balance(api_key) == 100


# --- limits --------------------------------------------------------------------------------------


def test_pixel_and_side_limits_are_413_from_the_header(limited_server: LiveServer) -> None:
    key = limited_server.create_key(10)
    side = assert_error(limited_server.remove(key, subject_image(500, 40, "PNG")), 413, "image_too_large")
    assert "400 px" in side["error"]["message"]
    pixels = assert_error(limited_server.remove(key, subject_image(300, 300, "PNG")), 413, "image_too_large")
    assert "60000" in pixels["error"]["message"]
    assert_cutout(limited_server.remove(key, subject_image(240, 240, "PNG"), model="ghost"), (240, 240))
    assert limited_server.balance(key) == 9


def test_declared_oversize_body_is_refused_before_it_is_sent(limited_server: LiveServer) -> None:
    key = limited_server.create_key(1)
    head = (
        f"POST /v2/rembg/ HTTP/1.1\nHost: x\nApiKey: {key}\n"
        f"Content-Type: multipart/form-data; boundary=b\nContent-Length: {10**9}\n"
    )
    status, body = raw_request(limited_server.url, head)  # not one byte of the body is sent
    assert status == 413 and body["error"]["code"] == "payload_too_large"


def test_streamed_oversize_body_is_refused_while_it_streams(limited_server: LiveServer) -> None:
    key = limited_server.create_key(1)
    head = (
        f"POST /v2/rembg/ HTTP/1.1\nHost: x\nApiKey: {key}\n"
        "Content-Type: multipart/form-data; boundary=b\nTransfer-Encoding: chunked\n"
    )
    part = b'--b\r\nContent-Disposition: form-data; name="image"; filename="a.jpg"\r\n\r\n'
    chunk = 32 * 1024
    chunks = [b"%x\r\n%s\r\n" % (len(part), part)]
    # Twice the limit, and never the final 0-length chunk: the answer cannot wait for the end.
    chunks += [b"%x\r\n%s\r\n" % (chunk, b"\xff" * chunk)] * (2 * LIMITS["max_body_bytes"] // chunk)
    status, body = raw_request(limited_server.url, head, chunks)
    assert status == 413 and body["error"]["code"] == "payload_too_large"
    assert limited_server.balance(key) == 1


def test_stalled_upload_gets_408(limited_server: LiveServer) -> None:
    key = limited_server.create_key(1)
    head = f"POST /v2/rembg/ HTTP/1.1\nHost: x\nApiKey: {key}\nContent-Type: multipart/form-data; boundary=b\nContent-Length: 5000\n"
    started = time.monotonic()
    status, body = raw_request(limited_server.url, head, [b"--b\r\n"])
    assert status == 408 and body["error"]["code"] == "request_timeout"
    assert "stalled" in body["error"]["message"]
    assert time.monotonic() - started < 10


def test_trickling_upload_hits_the_deadline(limited_server: LiveServer) -> None:
    key = limited_server.create_key(1)
    head = f"POST /v2/rembg/ HTTP/1.1\nHost: x\nApiKey: {key}\nContent-Type: multipart/form-data; boundary=b\nContent-Length: 5000\n"
    part_head = b'--b\r\nContent-Disposition: form-data; name="image"; filename="a.jpg"\r\n\r\n'
    trickle = [part_head] + [b"\xff"] * 40
    status, body = raw_request(limited_server.url, head, trickle, pause_s=0.3)  # never pauses for 1 s
    assert status == 408 and "longer than 3 s" in body["error"]["message"]
    assert limited_server.balance(key) == 1


# --- CORS ----------------------------------------------------------------------------------------


def test_cors_preflight_allows_the_api_key_header(limited_server: LiveServer) -> None:
    preflight = {
        "Origin": "https://shop.example",
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "apikey, content-type",
    }
    response = requests.options(limited_server.url + "/v2/rembg/", headers=preflight, timeout=10)
    assert response.status_code == 200
    assert response.headers["Access-Control-Allow-Origin"] == "https://shop.example"
    assert "apikey" in response.headers["Access-Control-Allow-Headers"].lower()
    assert "POST" in response.headers["Access-Control-Allow-Methods"]

    other = requests.options(
        limited_server.url + "/v2/rembg/", headers={**preflight, "Origin": "https://evil.example"}, timeout=10
    )
    assert "Access-Control-Allow-Origin" not in other.headers
    assert_error(other, 400, "invalid_parameter")  # in our shape, not Starlette's plain text


def test_cors_headers_on_results_and_errors(limited_server: LiveServer) -> None:
    key = limited_server.create_key(5)
    for image in (subject_image(64, 48), b"not an image"):
        response = requests.post(
            limited_server.url + "/v2/rembg/",
            headers={"ApiKey": key, "Origin": "https://shop.example"},
            files={"image": ("a.jpg", image)},
            data={"model": "ghost"},
            timeout=60,
        )
        assert response.status_code in (200, 400)
        assert response.headers["Access-Control-Allow-Origin"] == "https://shop.example"
        exposed = response.headers["Access-Control-Expose-Headers"].lower()
        assert "x-request-id" in exposed and "x-credits-remaining" in exposed


def test_cors_default_allows_any_origin(live_server: LiveServer) -> None:
    response = requests.options(
        live_server.url + "/v2/rembg/",
        headers={
            "Origin": "https://anything.example",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "ApiKey",
        },
        timeout=10,
    )
    assert response.status_code == 200 and response.headers["Access-Control-Allow-Origin"] == "*"


# --- OpenAPI -------------------------------------------------------------------------------------


def test_openapi_lists_every_route_the_app_serves(live_server: LiveServer) -> None:
    from starlette.routing import Route

    from app.main import create_app
    from app.openapi.document import UNDOCUMENTED

    document = requests.get(live_server.url + "/openapi.json", timeout=10).json()
    assert document["openapi"].startswith("3.1")
    served = {
        (route.path, method.lower())
        for route in create_app().routes
        if isinstance(route, Route)
        for method in (route.methods or ()) - {"HEAD"}
    }
    documented = {(path, method) for path, methods in document["paths"].items() for method in methods}
    assert not documented & UNDOCUMENTED and served == documented | UNDOCUMENTED
    operation_ids = [op["operationId"] for methods in document["paths"].values() for op in methods.values()]
    assert operation_ids == [
        "removeBackground",
        "removeBackgroundMask",
        "getAccount",
        "getJob",
        "cancelJob",
        "getJobResult",
        "createBatch",
        "getBatch",
        "cancelBatch",
        "getBatchZip",
    ]
    assert all(op["tags"] for methods in document["paths"].values() for op in methods.values())
    assert document["servers"]
    upload = document["paths"]["/v2/rembg/"]["post"]
    form = upload["requestBody"]["content"]["multipart/form-data"]["schema"]
    # Neither image nor image_url is required alone: one of the two stands (a 400 says so when neither does).
    assert "required" not in form and {"image", "image_url"} <= set(form["properties"])
    assert set(form["properties"]["model"]["enum"]) == {"ghost", "falcon", "aurora", "auto"}
    assert "image/png" in upload["responses"]["200"]["content"]
    assert {"400", "401", "402", "408", "413", "429", "500", "503"} <= set(upload["responses"])


# The two upload operations run in positive mode only: in negative mode schemathesis (4.32) filters its
# mutated multipart bodies through jsonschema_rs, which cannot validate its own Binary values, and the
# run stops on that operation with "Runtime Error: Unsupported type: 'Binary'" for most seeds. Their
# negative cases (bad fields, values, files) are this file's and test_errors.py's own tests.
UPLOADS = "^removeBackground"
PASSES = {
    "all modes, other operations": ["--exclude-operation-id-regex", UPLOADS],
    # No stateful phase: its links (an upload's 202 -> the job) lead out of the two operations chosen.
    "positive, uploads": [
        *("--mode", "positive", "--include-operation-id-regex", UPLOADS),
        *("--phases", "examples,coverage,fuzzing"),
    ],
}


def _schemathesis(live_server: LiveServer, key: str, cwd: Path, *chosen: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            str(Path(sys.executable).parent / "schemathesis"),
            "run",
            live_server.url + "/openapi.json",
            "--header",
            f"ApiKey: {key}",
            "--checks",
            "all",
            # Generated "images" are random bytes: valid by the schema, refused (400) by the service.
            # DELETE on a job or batch cancels it; the cancelled job stays readable (app/jobs/), by design.
            "--exclude-checks",
            "positive_data_acceptance,use_after_free",
            # Its warnings (ids it could not find, data it mostly saw refused) come and go with its seed.
            "--warnings",
            "off",
            "--max-examples",
            "25",
            "--workers",
            "1",
            "--request-timeout",
            "60",
            # To replay a failure: SCHEMATHESIS_SEED=<the seed it printed>.
            *(["--seed", os.environ["SCHEMATHESIS_SEED"]] if "SCHEMATHESIS_SEED" in os.environ else []),
            *chosen,
        ],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=280,
    )


@pytest.mark.parametrize("chosen", PASSES.values(), ids=PASSES.keys())
def test_schemathesis_finds_no_server_error_and_no_undocumented_response(
    live_server: LiveServer, tmp_path: Path, chosen: list[str]
) -> None:
    # Enough credits and rate that the run explores the API instead of collecting 402/429s.
    key = live_server.create_key(100_000, "--rate", "100000/minute")
    result = _schemathesis(live_server, key, tmp_path, *chosen)
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
    # Its one warning may be that an operation "mostly rejected generated data": generated "images" are
    # random bytes (a 400 by design), and neither image nor image_url is required alone. Nothing else.
    warnings = re.findall(r"^\s*⚠️ (.+)$", result.stdout, re.M)
    assert "No issues found" in result.stdout or warnings == [
        "Schema validation mismatch: 1 operation mostly rejected generated data"
    ], result.stdout[-3000:]
    assert " failed" not in result.stdout.split("SUMMARY")[-1], result.stdout[-3000:]
