"""The demo page's many-photos section (app/static/demo-batch.js) in Chromium: several photos sent
as one batch, a progress bar per photo and for the batch, a bad photo failing alone, the ZIP."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

from playwright.sync_api import Browser, expect

from harness import LiveServer, subject_image


def test_demo_sends_many_photos_as_a_batch_with_progress_and_a_zip(
    browser: Browser, live_server: LiveServer, api_key: str, tmp_path: Path
) -> None:
    photos = []
    for name, data in (("a.jpg", subject_image(64, 48)), ("b.jpg", subject_image(80, 60)), ("bad.jpg", b"nope")):
        (tmp_path / name).write_bytes(data)
        photos.append(str(tmp_path / name))
    page = browser.new_context(accept_downloads=True).new_page()
    page.goto(live_server.url + "/demo")
    expect(page.locator("#batch-send")).to_be_disabled()
    page.fill("#key", api_key)
    page.select_option("#model", "ghost")
    page.set_input_files("#batch-files", photos)
    page.click("#batch-send")
    expect(page.locator("#batch-status")).to_have_text("Done: 2 cut out, 1 failed.", timeout=60_000)
    assert page.locator("#batch-items progress").count() == 3
    assert page.locator("#batch-progress").evaluate("bar => bar.value") == 1
    expect(page.locator("#batch-items li").nth(2)).to_contain_text("bad.jpg: failed")
    expect(page.locator("#batch-items li").nth(2)).to_have_class("failed")  # shown in red
    with page.expect_download() as download:
        page.click("#batch-zip")
    archive = zipfile.ZipFile(io.BytesIO(Path(download.value.path()).read_bytes()))
    assert sorted(archive.namelist()) == ["a.png", "b.png"]
    section, zip_link = page.locator("#batch").bounding_box(), page.locator("#batch-zip").bounding_box()
    assert section is not None and zip_link is not None
    assert zip_link["y"] + zip_link["height"] <= section["y"] + section["height"], "the ZIP link inside its panel"
    assert page.evaluate("document.documentElement.scrollWidth <= innerWidth"), "no sideways scrolling"
    page.screenshot(path=str(tmp_path / "batch-done.png"), full_page=True)
