"""Hostile uploads: a corpus of broken and malicious files, property-based fuzzing, bounded memory.

Every answer is a PNG (200) or a 4xx in the error shape; nothing is charged
unless a PNG came back; the server keeps answering; bombs cost no memory.
Large hostile files are generated here at test time, never committed.
"""

from __future__ import annotations

import concurrent.futures
import io
import random
import struct
import zlib
from collections.abc import Callable, Iterator

import numpy as np
import pillow_heif
import pytest
import requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from app.errors import ApiError
from app.imaging import codec
from harness import (
    SHARED_TESTDATA,
    LiveServer,
    assert_error,
    concurrency_env,
    png_of,
    proc_status_mb,
    raw_request,
    subject_image,
)

pillow_heif.register_heif_opener()  # lets the tests write HEIC

FORMATS = ["JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF", "HEIF"]
HUGE = 60_000  # a side far over any limit


def base_photo() -> Image.Image:
    """A real photo when the shared test data is there (optional), else the synthetic subject."""
    photos = sorted(SHARED_TESTDATA.glob("*.jpg")) if SHARED_TESTDATA.exists() else []
    img = Image.open(photos[0]) if photos else Image.open(io.BytesIO(subject_image(128, 96)))
    img = img.convert("RGB")
    img.thumbnail((128, 128))
    # Even sides: for odd ones the HEIF encoder adds a clean-aperture box that the forger leaves alone.
    return img.crop((0, 0, img.width // 2 * 2, img.height // 2 * 2))


def encode(img: Image.Image, fmt: str) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt)
    return buf.getvalue()


# --- header forgery: claim a huge size in the header of a small valid file ------------------------


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def forge_png(data: bytes) -> bytes:
    ihdr = struct.pack(">II", HUGE, HUGE) + data[24:29]
    return data[:8] + _png_chunk(b"IHDR", ihdr) + data[33:]


def forge_jpeg(data: bytes) -> bytes:
    for marker in (b"\xff\xc0", b"\xff\xc2", b"\xff\xc1"):
        at = data.find(marker)
        if at > 0:
            return data[: at + 5] + struct.pack(">HH", HUGE, HUGE) + data[at + 9 :]
    raise AssertionError("no SOF marker")


def forge_gif(data: bytes) -> bytes:
    return data[:6] + struct.pack("<HH", 65535, 65535) + data[10:]


def forge_bmp(data: bytes) -> bytes:
    return data[:18] + struct.pack("<ii", HUGE, HUGE) + data[26:]


def forge_heif(data: bytes) -> bytes:
    # Every `ispe` (image spatial extent) box: an encoder may write one per item (image, grid, alpha).
    forged = bytearray(data)
    at = forged.find(b"ispe")
    while at != -1:
        forged[at + 8 : at + 16] = struct.pack(">II", HUGE, HUGE)
        at = forged.find(b"ispe", at + 16)
    return bytes(forged)


FORGERS: dict[str, Callable[[bytes], bytes]] = {
    "PNG": forge_png,
    "JPEG": forge_jpeg,
    "GIF": forge_gif,
    "BMP": forge_bmp,
    "HEIF": forge_heif,
}


# --- synthetic hostile files -------------------------------------------------------------------


def png_bomb(side: int = 12_000) -> bytes:
    """A ~140 KB PNG that decodes to side x side gray pixels (144 MB at 12000): refused from the header."""
    raw = zlib.compressobj(9)
    row = b"\x00" * (side + 1)  # filter byte + one byte per pixel
    body = b"".join(raw.compress(row) for _ in range(side)) + raw.flush()
    ihdr = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", body) + _png_chunk(b"IEND", b"")


def png_text_bomb() -> bytes:
    """A valid small PNG carrying a zTXt chunk that inflates to 64 MB."""
    small = encode(Image.new("RGB", (32, 32), (200, 50, 50)), "PNG")
    ztxt = b"Comment\x00\x00" + zlib.compress(b"A" * (64 << 20), 9)
    return small[:33] + _png_chunk(b"zTXt", ztxt) + small[33:]


def gif_bomb() -> bytes:
    """A GIF whose logical screen is 65535 x 65535 around a 1x1 frame."""
    small = encode(Image.new("P", (1, 1)), "GIF")
    return forge_gif(small)


def strip(width: int, height: int) -> bytes:
    return encode(Image.new("RGB", (width, height), (120, 60, 30)), "PNG")


SYNTHETIC: dict[str, tuple[Callable[[], bytes], set[int]]] = {
    "empty": (lambda: b"", {400}),
    "one-byte": (lambda: b"\xff", {400}),
    "text-renamed-jpg": (lambda: b"Dear customer, please find attached..." * 20, {400}),
    "html": (lambda: b"<!doctype html><html><body><img src=x onerror=alert(1)></body></html>", {400}),
    "svg": (lambda: b'<svg xmlns="http://www.w3.org/2000/svg" width="99999" height="99999"/>', {400}),
    "pdf": (lambda: b"%PDF-1.7\n1 0 obj<<>>endobj\ntrailer<<>>\n%%EOF", {400}),
    "eps-ghostscript": (lambda: b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 100 100\nshowpage\n", {400}),
    "psd": (lambda: encode(Image.new("RGB", (8, 8)), "PNG").replace(b"\x89PNG", b"8BPS", 1), {400}),
    "ico-not-accepted": (lambda: encode(Image.new("RGB", (32, 32)), "ICO"), {400}),
    "ppm-not-accepted": (lambda: encode(Image.new("RGB", (32, 32)), "PPM"), {400}),
    "magic-only-png": (lambda: b"\x89PNG\r\n\x1a\n", {400}),
    "magic-only-jpeg": (lambda: b"\xff\xd8\xff\xe0", {400}),
    "png-bomb-pixels": (png_bomb, {413}),
    "png-bomb-side": (lambda: png_bomb(13_000), {413}),
    "png-text-bomb": (png_text_bomb, {400}),
    "gif-screen-bomb": (gif_bomb, {413}),
    "one-pixel": (lambda: strip(1, 1), {200}),
    "one-pixel-row": (lambda: strip(3000, 1), {200}),
    "one-pixel-column": (lambda: strip(1, 3000), {200}),
    "jpeg-with-zip-appended": (lambda: subject_image(96, 72) + b"PK\x03\x04" + bytes(4000), {200}),
}


def corpus() -> Iterator[tuple[str, bytes, set[int]]]:
    photo = base_photo()
    rng = random.Random(5)
    for fmt in FORMATS:
        data = encode(photo, fmt)
        for fraction in (0.05, 0.5, 0.9):
            yield f"{fmt}-truncated-{fraction}", data[: int(len(data) * fraction)], {200, 400}
        yield f"{fmt}-last-byte-missing", data[:-1], {200, 400}
        for flips in (1, 16, 256):
            mutated = bytearray(data)
            for _ in range(flips):
                mutated[rng.randrange(len(mutated))] ^= 1 << rng.randrange(8)
            yield f"{fmt}-bitflip-{flips}", bytes(mutated), {200, 400, 413}
        yield f"{fmt}-zeroed-magic", bytes(8) + data[8:], {400}
        yield f"{fmt}-body-of-another-format", (b"GIF89a" if fmt != "GIF" else b"BM") + data[6:], {400, 413}
        if fmt in FORGERS:
            yield f"{fmt}-forged-size", FORGERS[fmt](data), {413}
    for name, (make, expected) in SYNTHETIC.items():
        yield name, make(), expected


CORPUS = list(corpus())


@pytest.fixture(scope="module")
def corpus_key(live_server: LiveServer) -> str:
    return live_server.create_key(100_000, "--rate", "100000/minute")


@pytest.mark.parametrize(("name", "data", "expected"), CORPUS, ids=[name for name, _, _ in CORPUS])
def test_hostile_file_gets_png_or_clear_4xx(
    live_server: LiveServer, corpus_key: str, name: str, data: bytes, expected: set[int]
) -> None:
    before = live_server.balance(corpus_key)
    response = live_server.remove(corpus_key, data, model="ghost")
    assert response.status_code in expected, (response.status_code, response.text[:300])
    if response.status_code == 200:
        assert png_of(response.content).mode == "RGBA"
        assert live_server.balance(corpus_key) == before - 1
    else:
        code = {400: "invalid_image", 413: "image_too_large"}[response.status_code]
        assert_error(response, response.status_code, code)
        assert live_server.balance(corpus_key) == before, "nothing charged for a refusal"


def test_service_answers_normally_after_the_corpus(live_server: LiveServer, corpus_key: str) -> None:
    assert live_server.process is not None and live_server.process.poll() is None
    assert requests.get(live_server.url + "/ready", timeout=10).status_code == 200
    response = live_server.remove(corpus_key, subject_image(160, 120), model="falcon")
    assert response.status_code == 200 and png_of(response.content).size == (160, 120)
    assert "Traceback" not in live_server.log()


# --- property-based -----------------------------------------------------------------------------

MAGICS = [
    b"\xff\xd8\xff",
    b"\x89PNG\r\n\x1a\n",
    b"RIFF\x00\x00\x00\x00WEBPVP8 ",
    b"GIF89a",
    b"BM",
    b"II*\x00",
    b"\x00\x00\x00\x18ftypheic",
]
BASES = [encode(base_photo().resize((48, 36)), fmt) for fmt in FORMATS]


@st.composite
def mutated_images(draw: st.DrawFn) -> bytes:
    """A valid small image with some bytes overwritten, cut short, or a random body behind a real magic."""
    kind = draw(st.sampled_from(["mutate", "truncate", "magic"]))
    if kind == "magic":
        return draw(st.sampled_from(MAGICS)) + draw(st.binary(max_size=2048))
    data = bytearray(draw(st.sampled_from(BASES)))
    if kind == "truncate":
        return bytes(data[: draw(st.integers(0, len(data)))])
    for _ in range(draw(st.integers(1, 12))):
        data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
    return bytes(data)


@settings(max_examples=400, deadline=None)
@given(data=st.one_of(mutated_images(), st.binary(max_size=4096)))
def test_probe_and_decode_fail_only_with_api_errors(data: bytes) -> None:
    """In process, many examples: any input is decoded or refused with a 4xx ApiError, never another exception."""
    try:
        info = codec.probe(data, max_pixels=4_000_000, max_side=4000)
        decoded = codec.decode(data)
    except ApiError as err:
        assert err.status in (400, 413) and err.message
        return
    assert decoded.rgb.dtype == np.uint8 and decoded.rgb.ndim == 3 and decoded.rgb.shape[2] == 3
    assert sorted(decoded.rgb.shape[:2]) == sorted((info.height, info.width))


@pytest.fixture(scope="module")
def fuzz_key(live_server: LiveServer) -> str:
    return live_server.create_key(100_000, "--rate", "100000/minute")


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    data=st.one_of(mutated_images(), st.binary(max_size=2048)), path=st.sampled_from(["/v2/rembg/", "/v2/rembg/mask/"])
)
def test_upload_path_answers_png_or_4xx(live_server: LiveServer, fuzz_key: str, data: bytes, path: str) -> None:
    response = live_server.remove(fuzz_key, data, model="ghost", path=path)
    assert response.status_code in (200, 400, 413), (response.status_code, response.text[:300])
    if response.status_code == 200:
        assert response.headers["content-type"] == "image/png" and response.headers["X-Credits-Charged"] == "1"
    else:
        assert_error(
            response, response.status_code, "invalid_image" if response.status_code == 400 else "image_too_large"
        )


ORIENTATION_SWAPS = {1: False, 2: False, 3: False, 4: False, 5: True, 6: True, 7: True, 8: True}
# The pixel modes each format can store.
FORMAT_MODES = {
    "JPEG": ["RGB", "L", "CMYK"],
    "PNG": ["RGB", "L", "RGBA", "P", "LA"],
    "WEBP": ["RGB", "RGBA"],
    "TIFF": ["RGB", "L", "RGBA", "P", "CMYK"],
}


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    width=st.integers(1, 64),
    height=st.integers(1, 64),
    fmt_mode=st.sampled_from([(fmt, mode) for fmt, modes in FORMAT_MODES.items() for mode in modes]),
    orientation=st.sampled_from(sorted(ORIENTATION_SWAPS)),
)
def test_any_valid_image_comes_back_at_its_displayed_size(
    live_server: LiveServer, fuzz_key: str, width: int, height: int, fmt_mode: tuple[str, str], orientation: int
) -> None:
    fmt, mode = fmt_mode
    img = Image.new("RGB", (width, height), (200, 40, 40)).convert(mode)
    exif = Image.Exif()
    exif[0x0112] = orientation
    buf = io.BytesIO()
    img.save(buf, fmt, exif=exif.tobytes())
    response = live_server.remove(fuzz_key, buf.getvalue(), model="aurora")
    assert response.status_code == 200, response.text[:300]
    expected = (height, width) if ORIENTATION_SWAPS[orientation] else (width, height)
    assert png_of(response.content).size == expected


# --- memory -------------------------------------------------------------------------------------


def test_concurrent_bombs_and_oversized_uploads_leave_peak_rss_bounded(start_server: Callable[..., LiveServer]) -> None:
    # Default limits: 25 MB bodies, 50 MP, 12000 px. One account sends all 36 at once: its plan's
    # concurrency is raised so that every upload reaches the limits under test (bodies and header
    # checks hold the account's slot).
    server = start_server(**concurrency_env(64))
    assert server.process is not None
    key = server.create_key(1000, "--rate", "100000/minute")
    assert server.remove(key, subject_image(320, 240), model="aurora").status_code == 200  # warm every code path
    baseline = proc_status_mb(server.process.pid, "VmHWM")

    limit = 25 * 1024 * 1024
    oversized = b"\xff\xd8\xff" + bytes(limit + 1024 * 1024)
    bombs = [png_bomb(), png_bomb(13_000), gif_bomb(), forge_jpeg(subject_image(64, 48)), png_text_bomb()]
    chunked_head = (
        f"POST /v2/rembg/ HTTP/1.1\nHost: x\nApiKey: {key}\n"
        "Content-Type: multipart/form-data; boundary=b\nTransfer-Encoding: chunked\n"
    )
    part = b'--b\r\nContent-Disposition: form-data; name="image"; filename="a.jpg"\r\n\r\n'
    piece = 256 * 1024
    chunks = [b"%x\r\n%s\r\n" % (len(part), part)] + [b"%x\r\n%s\r\n" % (piece, b"\x00" * piece)] * (
        (limit + 2 * piece) // piece
    )

    def streamed_oversize(_: int) -> int:
        return raw_request(server.url, chunked_head, chunks)[0]

    declared_head = chunked_head.replace("Transfer-Encoding: chunked", f"Content-Length: {len(oversized)}")

    def declared_oversize(_: int) -> int:
        return raw_request(server.url, declared_head, [oversized])[0]

    def bomb(i: int) -> int:
        return server.remove(key, bombs[i % len(bombs)]).status_code

    jobs = [(streamed_oversize, 12), (declared_oversize, 4), (bomb, 20)]
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        futures = [pool.submit(fn, i) for fn, count in jobs for i in range(count)]
        statuses = [f.result() for f in futures]
    assert set(statuses) <= {400, 413}, statuses
    assert statuses.count(413) >= 12 + 4 + 16

    growth = proc_status_mb(server.process.pid, "VmHWM") - baseline
    print(f"peak RSS {baseline:.0f} MB before, grew {growth:.1f} MB under {len(statuses)} hostile uploads")
    # Buffering the 16 oversized bodies would cost 400+ MB, decoding one bomb 144 MB or more.
    assert growth < 120, f"peak RSS grew by {growth:.0f} MB"
    assert server.remove(key, subject_image(160, 120), model="ghost").status_code == 200
    assert server.balance(key) == 1000 - 3  # aurora 2 + ghost 1: the refusals cost nothing


# --- secrets ------------------------------------------------------------------------------------


def test_messages_and_logs_never_contain_keys_or_uploaded_bytes(start_server: Callable[..., LiveServer]) -> None:
    server = start_server(CUTOUT_LOG_LEVEL="debug")
    key = server.create_key(20)
    marker = "SECRETPIXELS7f3a"
    tagged = Image.open(io.BytesIO(subject_image(64, 48, "PNG")))
    info = PngInfo()
    info.add_text("Comment", marker)
    buf = io.BytesIO()
    tagged.save(buf, "PNG", pnginfo=info)
    valid = buf.getvalue()
    uploads = [
        valid,
        valid[: len(valid) // 2],
        marker.encode() * 50,
        b"\x89PNG\r\n\x1a\n" + marker.encode() * 10,
        forge_png(valid),
    ]
    bodies = []
    for upload in uploads:
        for model in ("ghost", "aurora"):
            bodies.append(server.remove(key, upload, model=model).content)
    wrong_key = key[:-4] + "zzzz"
    bodies.append(server.remove(wrong_key, valid).content)
    bodies.append(requests.get(server.url + "/v2/account", headers={"ApiKey": wrong_key}, timeout=10).content)
    bodies.append(server.remove(key, valid, model=marker).content)  # echoed cut short, never the upload
    status, _ = raw_request(
        server.url,
        f"POST /v2/rembg/ HTTP/1.1\nHost: x\nApiKey: {key}\nContent-Type: text/plain\nContent-Length: 16\n",
        [marker.encode()],
    )
    assert status == 400
    log = server.log()
    for secret in (key, wrong_key, key[4:20]):
        assert secret not in log
        assert all(secret.encode() not in body for body in bodies)
    assert marker not in log
    assert sum(body.startswith(b'{"error"') for body in bodies) >= 8
    assert all(marker.encode() not in body for body in bodies if b"Unknown model" not in body)
