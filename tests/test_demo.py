"""The /demo page in Chromium at a desktop and a phone viewport: nothing shown before a photo is
chosen, a favicon, the form beside the result on a desktop and above it on a phone, a thumbnail of
the chosen photo, the price of the chosen model and options before the click (from GET
/v2/account), plurals that agree, a before/after slider over the cut-out, and a key the browser
remembers until "Forget key". Screenshots of each state are written to the test's tmp folder
(look at them after a change to the page)."""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path

import pytest
from PIL import Image
from playwright.sync_api import Browser, Page, expect

from harness import ROOT, LiveServer, subject_image

VIEWPORTS = {"desktop": {"width": 1280, "height": 800}, "phone": {"width": 390, "height": 844}}
DEMO_JS = ROOT / "app" / "static" / "demo.js"


def box(page: Page, selector: str) -> dict[str, float]:
    found = page.locator(selector).bounding_box()
    assert found is not None, f"{selector} is not rendered"
    return found


@pytest.mark.parametrize("viewport", VIEWPORTS)
def test_demo_page_layout_slider_and_remembered_key(
    browser: Browser, live_server: LiveServer, api_key: str, tmp_path: Path, viewport: str
) -> None:
    context = browser.new_context(viewport=VIEWPORTS[viewport])
    page = context.new_page()
    page.goto(live_server.url + "/demo")

    # Before a photo is chosen: no result frame, no (broken) image at all.
    expect(page.locator("#result")).to_be_hidden()
    assert page.locator("img:visible").count() == 0
    icon = page.evaluate(
        """async () => {
          const response = await fetch(document.querySelector("link[rel=icon]").href);
          return [response.status, response.headers.get("content-type")];
        }"""
    )
    assert icon[0] == 200 and icon[1].startswith("image/svg+xml")
    expect(page.locator("#forget")).to_be_hidden()
    page.screenshot(path=str(tmp_path / f"{viewport}-empty.png"), full_page=True)

    model, key, form, stage = box(page, "#model"), box(page, "#key"), box(page, "#form"), box(page, ".stage")
    assert key["y"] >= model["y"] + model["height"], "the model, then the key"
    for control in (model, key, box(page, ".key")):
        assert control["x"] + control["width"] <= form["x"] + form["width"], "every control inside the form's panel"
    assert page.evaluate("document.documentElement.scrollWidth <= innerWidth"), "no sideways scrolling"
    expect(page.locator("#price")).to_have_text("The price shows once your key is in.")
    if viewport == "phone":
        assert stage["y"] >= form["y"] + form["height"], "phone: the result under the form"
        assert box(page, "#submit")["width"] >= form["width"] - 40, "phone: the button as wide as the form"
        assert form["width"] <= VIEWPORTS["phone"]["width"], "nothing wider than the phone"
    else:
        assert stage["x"] >= form["x"] + form["width"], "desktop: the result beside the form"
        assert form["y"] + form["height"] <= VIEWPORTS["desktop"]["height"], "desktop: the form fits the screen"

    photo = tmp_path / "photo.jpg"
    photo.write_bytes(subject_image(320, 240))
    page.fill("#key", api_key)
    page.select_option("#model", "ghost")
    # The price before the click, from the key's account: the model's, then with a priced option.
    expect(page.locator("#price")).to_have_text("This costs 1 credit of your 100 credits")
    expect(page.locator("#model option[value=ghost]")).to_contain_text("· 1 credit")
    page.set_input_files("#file", str(photo))
    # A thumbnail of the chosen photo, with its name and size, in place of the drop invitation.
    thumb = page.locator("#thumb")
    expect(thumb).to_be_visible()
    assert thumb.evaluate("img => img.complete && img.naturalWidth") == 320
    assert box(page, "#thumb")["width"] <= 80
    expect(page.locator("#drop-text")).to_have_text("photo.jpg")
    expect(page.locator("#drop-hint")).to_contain_text("KB")
    expect(page.locator("#before")).to_be_visible()
    expect(page.locator("#split")).to_be_hidden()
    page.screenshot(path=str(tmp_path / f"{viewport}-chosen.png"), full_page=True)
    page.click("#submit")
    expect(page.locator("#download")).to_be_visible(timeout=60_000)
    expect(page.locator("#status")).to_contain_text("with ghost: 1 credit charged, 99 credits left.")
    expect(page.locator("#price")).to_have_text("This costs 1 credit of your 99 credits")

    # The slider cuts the photo laid over the cut-out: at 25%, a quarter of the photo shows.
    expect(page.locator("#after")).to_be_visible()
    page.locator("#split").fill("25")
    assert "75%" in page.evaluate("getComputedStyle(document.getElementById('before')).clipPath")
    # Both boxes in one read: on a phone the page is still scrolling the result into view (smoothly).
    before, after = page.evaluate(
        """() => ["before", "after"].map((id) => {
          const r = document.getElementById(id).getBoundingClientRect();
          return {x: r.x, y: r.y, width: r.width, height: r.height};
        })"""
    )
    assert before == after, "the photo lies exactly over the cut-out"
    if viewport == "phone":
        assert after["width"] <= VIEWPORTS["phone"]["width"] - 20, "the picture fits the phone's width"
    page.screenshot(path=str(tmp_path / f"{viewport}-result.png"), full_page=True)

    # Live preview: a background colour shows behind the transparent cut-out at once, with no new request.
    requests_sent: list[str] = []
    page.on("request", lambda request: requests_sent.append(request.url))
    page.click("#options summary")
    page.select_option("#background", "color")
    page.locator("#bg_color").fill("#00ff00")
    shot = Image.open(io.BytesIO(page.locator("#after").screenshot()))
    red, green, blue = shot.convert("RGB").getpixel(
        (shot.width - 12, 12)
    )  # near a corner (inside its rounding), right of the slider
    assert green > 240 and red < 20 and blue < 20, (red, green, blue)
    page.select_option("#background", "transparent")
    shot = Image.open(io.BytesIO(page.locator("#after").screenshot()))
    assert shot.convert("RGB").getpixel((shot.width - 12, 12))[0] > 200, "the (grey or white) checkerboard is back"
    assert requests_sent == [], requests_sent
    page.click("#options summary")

    # The key that worked is remembered across a reload, until the user forgets it.
    page.reload()
    expect(page.locator("#key")).to_have_value(api_key)
    expect(page.locator("#forget")).to_be_visible()
    page.click("#forget")
    expect(page.locator("#key")).to_have_value("")
    assert page.evaluate("localStorage.getItem('cutout.apiKey')") is None
    page.reload()
    expect(page.locator("#key")).to_have_value("")
    context.close()


def test_demo_page_sends_output_options_and_shows_a_cropped_answer_alone(
    browser: Browser, live_server: LiveServer, api_key: str, tmp_path: Path
) -> None:
    page = browser.new_page()
    page.goto(live_server.url + "/demo")
    photo = tmp_path / "photo.jpg"
    photo.write_bytes(subject_image(320, 240))
    page.fill("#key", api_key)
    page.select_option("#model", "ghost")
    page.set_input_files("#file", str(photo))
    page.click("#options summary")
    page.select_option("#output_format", "webp")
    page.select_option("#background", "color")
    page.locator("#bg_color").fill("#ff8800")
    page.check("#crop_to_bbox")
    page.click("#submit")
    download = page.locator("#download")
    expect(download).to_be_visible(timeout=60_000)

    expect(download).to_have_attribute("download", "photo-cutout.webp")
    expect(download).to_have_text("Download WEBP")
    answer = page.evaluate(
        """async () => {
          const blob = await (await fetch(document.getElementById("download").href)).blob();
          const bitmap = await createImageBitmap(blob);
          const canvas = new OffscreenCanvas(bitmap.width, bitmap.height);
          const context = canvas.getContext("2d");
          context.drawImage(bitmap, 0, 0);
          const corner = Array.from(context.getImageData(1, 1, 1, 1).data);
          return { type: blob.type, width: bitmap.width, height: bitmap.height, corner };
        }"""
    )
    # The options reached the API: WebP, cropped to the disc, on the chosen colour.
    assert answer["type"] == "image/webp" and answer["width"] < 320 and answer["height"] < 240, answer
    red, green, blue, alpha = answer["corner"]
    assert abs(red - 255) < 12 and abs(green - 136) < 12 and blue < 12 and alpha == 255, answer
    # Cropped: another size than the photo, so it is shown alone, without the slider.
    expect(page.locator("#before")).to_be_hidden()
    expect(page.locator("#after")).to_be_visible()
    expect(page.locator("#split")).to_be_hidden()
    page.screenshot(path=str(tmp_path / "options-result.png"), full_page=True)
    page.close()


def test_demo_page_prices_options_agrees_in_number_and_never_parses_server_text(
    browser: Browser, start_server: Callable[..., LiveServer], tmp_path: Path
) -> None:
    live_server = start_server(CUTOUT_OPTION_COSTS='{"shadow": 2}')
    page = browser.new_page()
    page.goto(live_server.url + "/demo")
    photo = tmp_path / "photo.jpg"
    photo.write_bytes(subject_image(160, 120))
    page.set_input_files("#file", str(photo))
    page.select_option("#model", "ghost")

    # A half-typed key is not sent (a wrong key counts against the address's limit); a whole wrong one is.
    page.fill("#key", "co_abc")
    expect(page.locator("#price")).to_have_text("A whole key is co_ and 43 more characters.")
    page.fill("#key", "co_" + "x" * 43)
    expect(page.locator("#price")).to_contain_text("unknown or revoked")

    # The chosen model's price, plus what a priced option adds; short of credits, it says so.
    page.fill("#key", live_server.create_key(2))
    expect(page.locator("#price")).to_have_text("This costs 1 credit of your 2 credits")
    page.select_option("#model", "aurora")
    expect(page.locator("#price")).to_have_text("This costs 2 credits of your 2 credits")
    page.click("#options summary")
    page.check("#shadow")
    expect(page.locator("#price")).to_have_text("This costs 4 credits of your 2 credits: top up first")
    page.uncheck("#shadow")
    page.select_option("#model", "ghost")

    # Two credits: one request leaves exactly one ("1 credit left", not "1 credits").
    page.click("#submit")
    expect(page.locator("#status")).to_contain_text("1 credit charged, 1 credit left.", timeout=60_000)
    expect(page.locator("#price")).to_have_text("This costs 1 credit of your 1 credit")

    # An unlimited key: free, and nothing charged.
    created = live_server.cli("keys", "create", "--unlimited")
    page.fill("#key", created.stdout.strip().splitlines()[-1])
    expect(page.locator("#price")).to_have_text("This is free with this key (unlimited)")
    expect(page.locator("#model option[value=ghost]")).to_have_text("ghost: fastest")
    page.click("#submit")
    expect(page.locator("#status")).to_contain_text("with ghost: nothing charged.", timeout=60_000)
    page.screenshot(path=str(tmp_path / "unlimited.png"), full_page=True)
    page.close()

    # Server text (error messages, file names) is only ever set as text.
    script = DEMO_JS.read_text()
    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval("):
        assert sink not in script, sink


def test_demo_page_offers_auto_and_shows_the_confidence_under_the_result(
    browser: Browser, live_server: LiveServer, api_key: str, tmp_path: Path
) -> None:
    page = browser.new_page()
    page.goto(live_server.url + "/demo")
    photo = tmp_path / "photo.jpg"
    photo.write_bytes(subject_image(320, 240))
    page.fill("#key", api_key)
    page.select_option("#model", "auto")
    page.set_input_files("#file", str(photo))
    page.click("#submit")
    expect(page.locator("#download")).to_be_visible(timeout=60_000)
    expect(page.locator("#confidence")).to_be_visible()
    expect(page.locator("#confidence")).to_contain_text("Mask confidence 0.")
    page.close()
