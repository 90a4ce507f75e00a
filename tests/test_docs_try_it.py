"""/docs "Try it out", as a newcomer does it in Chromium: Authorize, attach a photo, Execute with
nothing else changed, and a cut-out comes back. Swagger UI pre-fills every field from the
schema (defaults, examples), so this fails when any of those is a value the server refuses."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, expect

from harness import LiveServer, subject_image

PHOTO_SIZE = (200, 150)


def authorize(page: Page, key: str) -> None:
    page.click("button.authorize")
    dialog = page.locator(".modal-ux")
    expect(dialog).to_be_visible()
    dialog.locator(".auth-container").first.locator("input").fill(key)
    dialog.locator(".auth-container").first.locator("button.authorize").click()
    dialog.locator("button.btn-done").first.click()


def try_it_out(page: Page, operation_id: str, photo: Path) -> None:
    operation = page.locator(f"[id$='-{operation_id}']")
    operation.locator(".opblock-summary").first.click()
    operation.locator("button.try-out__btn").click()
    operation.locator("tr[data-property-name='image'] input[type=file]").set_input_files(str(photo))
    operation.locator("button.execute").click()


@pytest.mark.parametrize(("operation_id", "mode"), [("removeBackground", "RGBA"), ("removeBackgroundMask", "L")])
def test_try_it_out_with_nothing_but_a_photo_gives_the_image(
    browser: Browser, live_server: LiveServer, tmp_path: Path, operation_id: str, mode: str
) -> None:
    key = live_server.create_key(100)
    photo = tmp_path / "photo.jpg"
    photo.write_bytes(subject_image(*PHOTO_SIZE))
    page = browser.new_page()
    page.goto(live_server.url + "/docs")
    expect(page.locator("button.authorize")).to_be_visible(timeout=30_000)
    authorize(page, key)
    try_it_out(page, operation_id, photo)

    operation = page.locator(f"[id$='-{operation_id}']")
    status = operation.locator(".live-responses-table .response .response-col_status").first
    expect(status).to_have_text("200", timeout=60_000)
    # Swagger UI shows an image answer as an <img> of the bytes it got.
    image = operation.locator(".live-responses-table .response-col_description img").first
    expect(image).to_be_visible()
    shown = page.evaluate(
        """async (img) => {
          const blob = await (await fetch(img.src)).blob();
          const bitmap = await createImageBitmap(blob);
          const bytes = new Uint8Array(await blob.arrayBuffer());
          let text = "";
          for (const b of bytes) text += String.fromCharCode(b);
          return { type: blob.type, width: bitmap.width, height: bitmap.height, png: btoa(text) };
        }""",
        image.element_handle(),
    )
    assert (shown["width"], shown["height"]) == PHOTO_SIZE, shown["type"]
    from harness import png_of

    assert png_of(base64.b64decode(shown["png"])).mode == mode
    assert live_server.balance(key) < 100, "charged: it was a real cut-out"
    page.close()


@pytest.mark.parametrize("path", ["/v2/rembg/", "/v2/rembg/mask/"])
def test_the_documented_defaults_and_examples_pass(live_server: LiveServer, path: str) -> None:
    """Every form field sent at its documented default (as a form that sends all its fields does),
    and the JSON body's documented example: each is a 200."""
    import requests

    key = live_server.create_key(100)
    body = requests.get(live_server.url + "/openapi.json", timeout=10).json()["paths"][path]["post"]["requestBody"]
    form = body["content"]["multipart/form-data"]["schema"]["properties"]
    defaults = {name: schema["default"] for name, schema in form.items() if "default" in schema}
    assert {"crop_to_bbox", "output_format", "model", "operating_resolution"} <= set(defaults)
    fields = {name: str(value).lower() if isinstance(value, bool) else str(value) for name, value in defaults.items()}
    response = live_server.remove(key, subject_image(*PHOTO_SIZE), None, path=path, fields=fields)
    assert response.status_code == 200, response.text
    assert (
        response.headers["content-type"] == "image/png"
        and (int(response.headers["X-Width"]), int(response.headers["X-Height"])) == PHOTO_SIZE
    )
    example = body["content"]["application/json"]["example"]
    answered = requests.post(live_server.url + path, headers={"ApiKey": key}, json=example, timeout=60)
    assert answered.status_code == 200, answered.text
