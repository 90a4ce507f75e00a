"""Content negotiation by preference (app/removal/accept.py ACCEPT_RULE), through a real uvicorn: the
answer is JSON only when asked for (`sync_mode`, or an Accept that ranks JSON strictly above the
image type); `*/*`, a browser's and axios's defaults get the image. And the result's geometry
headers (remove.bg's names)."""

from __future__ import annotations

from pathlib import Path

import pytest
import requests

from app.removal.accept import ACCEPT_RULE
from harness import LiveServer, png_of, subject_image

ROOT = Path(__file__).resolve().parent.parent

CHROME = "text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,image/apng,*/*;q=0.8"
FIREFOX_IMAGE = "image/avif,image/webp,image/png,image/svg+xml,image/*;q=0.8,*/*;q=0.5"
AXIOS = "application/json, text/plain, */*"

# Accept header, the options sent, and the answer's content type.
CASES = [
    (None, {}, "image/png"),
    ("", {}, "image/png"),
    ("*/*", {}, "image/png"),
    (AXIOS, {}, "image/png"),
    (CHROME, {}, "image/png"),
    (FIREFOX_IMAGE, {}, "image/png"),
    ("image/png, application/json", {}, "image/png"),
    ("application/json;q=0.9, */*", {}, "image/png"),
    ("application/json, image/*;q=1.0", {}, "image/png"),
    ("application/json", {}, "application/json"),
    ("APPLICATION/JSON; charset=utf-8", {}, "application/json"),
    ("application/json, image/*;q=0.5", {}, "application/json"),
    ("application/json, */*;q=0.1", {}, "application/json"),
    ("image/png;q=0.2, application/json;q=0.3", {}, "application/json"),
    ("image/png;q=0.2, application/*;q=0.3", {}, "application/octet-stream"),  # a tie of JSON and bytes: bytes
    # The type compared is the one the answer would have.
    ("application/json;q=0.8, image/webp", {"output_format": "webp"}, "image/webp"),
    ("application/json;q=0.8, image/webp", {}, "application/json"),
    # The bytes as application/octet-stream only when that is preferred to the image's own type.
    ("application/octet-stream", {}, "application/octet-stream"),
    ("application/octet-stream, image/png", {}, "image/png"),
    ("application/octet-stream, application/json;q=0.5", {}, "application/octet-stream"),
    ("application/json, application/octet-stream", {}, "application/octet-stream"),
    # sync_mode decides, whatever Accept says.
    ("application/json", {"sync_mode": "false"}, "image/png"),
    (CHROME, {"sync_mode": "true"}, "application/json"),
    ("application/octet-stream", {"sync_mode": "false"}, "application/octet-stream"),
]


@pytest.mark.parametrize(("accept", "fields", "answered"), CASES)
def test_json_only_when_preferred(
    live_server: LiveServer, api_key: str, accept: str | None, fields: dict[str, str], answered: str
) -> None:
    headers = {} if accept is None else {"Accept": accept}
    response = requests.post(
        live_server.url + "/v2/rembg/",
        headers={"ApiKey": api_key, **headers},
        files={"image": ("photo.jpg", subject_image(), "image/jpeg")},
        data={"model": "ghost", **fields},
        timeout=60,
    )
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].split(";")[0] == answered
    if answered == "application/json":
        assert response.json()["image"]["url"].startswith("data:image/")


def test_the_documented_rule_is_the_codes() -> None:
    docs = (ROOT / "docs" / "output-options.md").read_text()
    assert ACCEPT_RULE in docs, "docs/output-options.md's copy of ACCEPT_RULE is stale"


def test_every_result_says_its_size_and_a_crop_where_it_came_from(live_server: LiveServer, api_key: str) -> None:
    image = subject_image(400, 300)
    plain = live_server.remove(api_key, image, "ghost")
    assert plain.status_code == 200
    assert (int(plain.headers["X-Width"]), int(plain.headers["X-Height"])) == png_of(plain.content).size == (400, 300)
    assert "X-Foreground-Left" not in plain.headers, "no crop, no foreground rectangle"

    cropped = live_server.remove(api_key, image, "ghost", fields={"crop_to_bbox": "true"})
    assert cropped.status_code == 200
    width, height = png_of(cropped.content).size
    assert (int(cropped.headers["X-Width"]), int(cropped.headers["X-Height"])) == (width, height)
    left, top = int(cropped.headers["X-Foreground-Left"]), int(cropped.headers["X-Foreground-Top"])
    assert (int(cropped.headers["X-Foreground-Width"]), int(cropped.headers["X-Foreground-Height"])) == (width, height)
    # subject_image draws its subject in the middle: the crop sits inside the photo, off its edges.
    assert left > 0 and top > 0 and left + width < 400 and top + height < 300, (left, top, width, height)
    # Placed back at (left, top), the crop is the plain cut-out's pixels there.
    full = png_of(plain.content).convert("RGBA")
    assert (
        full.crop((left, top, left + width, top + height)).tobytes()
        == png_of(cropped.content).convert("RGBA").tobytes()
    )

    smaller = live_server.remove(api_key, image, "ghost", fields={"crop_to_bbox": "true", "max_side": "50"})
    assert max(int(smaller.headers["X-Width"]), int(smaller.headers["X-Height"])) == 50
    assert smaller.headers["X-Foreground-Width"] == str(width), "the rectangle stays in the photo's pixels"
