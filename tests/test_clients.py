"""The client samples, run as they are against a live server: curl, Python requests,
PHP cURL, browser fetch (headless Chromium, cross-origin), plus the /demo and /docs pages.

The samples live in examples/; docs/clients.md shows every file there verbatim, and the README
points to both (checked below).
"""

from __future__ import annotations

import base64
import functools
import http.server
import json
import os
import re
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, expect

from harness import ROOT, LiveServer, free_port, png_of, subject_image

EXAMPLES = ROOT / "examples"
CLIENTS_PAGE = ROOT / "docs" / "clients.md"
# The code block's language for each kind of sample file.
LANGUAGES = {".sh": "sh", ".py": "python", ".php": "php", ".js": "js", ".mjs": "js", ".cjs": "js", ".ts": "ts"}
SAMPLES = sorted(path.name for path in EXAMPLES.iterdir() if path.is_file())
PHOTO_SIZE = (200, 150)
BAD_KEY = "co_this-key-does-not-exist"


@pytest.mark.parametrize("name", SAMPLES)
def test_clients_page_shows_each_sample_verbatim(name: str) -> None:
    """Every file in examples/ (a new one included) stands in docs/clients.md exactly as it is."""
    language = LANGUAGES.get(Path(name).suffix)
    assert language, f"examples/{name}: add its code block language to LANGUAGES"
    sample = (EXAMPLES / name).read_text()
    page = CLIENTS_PAGE.read_text()
    assert f"```{language}\n{sample}```\n" in page, f"docs/clients.md's {name} block differs from examples/{name}"


def test_readme_points_to_the_samples() -> None:
    readme = (ROOT / "README.md").read_text()
    assert "(examples/)" in readme and "(docs/clients.md)" in readme


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    """A folder with photo.jpg in it, where the samples run (they read photo.jpg, write out.png)."""
    (tmp_path / "photo.jpg").write_bytes(subject_image(*PHOTO_SIZE))
    return tmp_path


def run_sample(command: list[str], workdir: Path, server: LiveServer, key: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "CUTOUT_URL": server.url, "CUTOUT_API_KEY": key}
    return subprocess.run(command, cwd=workdir, env=env, capture_output=True, text=True, timeout=120)


def assert_cutout_png(path: Path) -> None:
    cutout = png_of(path.read_bytes())
    assert cutout.format == "PNG" and cutout.mode == "RGBA" and cutout.size == PHOTO_SIZE


COMMANDS = {
    "curl": ["bash", str(EXAMPLES / "curl.sh")],
    "python": [sys.executable, str(EXAMPLES / "python_requests.py")],
    "php": ["php", str(EXAMPLES / "php_curl.php")],
}


@pytest.mark.parametrize("client", COMMANDS)
def test_command_line_client_gets_the_png_and_is_charged(
    client: str, live_server: LiveServer, api_key: str, workdir: Path
) -> None:
    result = run_sample(COMMANDS[client], workdir, live_server, api_key)
    assert result.returncode == 0, result.stderr
    assert_cutout_png(workdir / "out.png")
    assert live_server.balance(api_key) == 99  # falcon costs 1


NODE = ["node", str(EXAMPLES / "node_fetch.mjs")]


def test_node_server_side_client_sends_photos_at_once_and_is_charged(
    live_server: LiveServer, api_key: str, workdir: Path
) -> None:
    """Node's built-ins only; four photos in one Promise.all on one key (free plan: one processed at
    once): the rest wait in the key's queue, so all four come back with no retry."""
    photos = [f"photo{n}.jpg" for n in range(4)]
    for name in photos:
        (workdir / name).write_bytes((workdir / "photo.jpg").read_bytes())
    result = run_sample([*NODE, *photos], workdir, live_server, api_key)
    assert result.returncode == 0, result.stderr
    for n in range(4):
        assert_cutout_png(workdir / f"photo{n}-cutout.png")
    assert result.stdout.strip().endswith("credits left: 96"), result.stdout
    assert live_server.balance(api_key) == 96  # falcon costs 1, four times


def test_node_client_prints_the_error_on_a_bad_key(live_server: LiveServer, workdir: Path) -> None:
    result = run_sample(NODE, workdir, live_server, BAD_KEY)
    assert result.returncode == 1
    assert result.stderr.startswith("401 invalid_api_key: The API key is unknown or revoked. (req_"), result.stderr
    assert not (workdir / "photo-cutout.png").exists()


def test_curl_keeps_the_error_json_on_a_bad_key(live_server: LiveServer, workdir: Path) -> None:
    result = run_sample(COMMANDS["curl"], workdir, live_server, BAD_KEY)
    assert result.returncode == 22, "--fail-with-body: curl's exit code for an HTTP error"
    error = json.loads((workdir / "out.png").read_text())["error"]
    assert error["code"] == "invalid_api_key" and error["request_id"].startswith("req_")


@pytest.mark.parametrize("client", ["python", "php"])
def test_script_client_prints_the_error_on_a_bad_key(client: str, live_server: LiveServer, workdir: Path) -> None:
    result = run_sample(COMMANDS[client], workdir, live_server, BAD_KEY)
    assert result.returncode == 1
    assert result.stderr.startswith("401 invalid_api_key: The API key is unknown or revoked. (req_"), result.stderr
    assert not (workdir / "out.png").exists()


@pytest.fixture
def other_origin(tmp_path: Path) -> Iterator[str]:
    """A page on another origin (its own port) that loads examples/browser.js, as a customer's site would."""
    (tmp_path / "index.html").write_text('<!doctype html><title>client</title><script src="browser.js"></script>')
    (tmp_path / "browser.js").write_bytes((EXAMPLES / "browser.js").read_bytes())
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()
    server.server_close()


# Runs in the page: builds a File from the photo's bytes, calls the sample, describes what came back.
CALL_SAMPLE = """async ([photoBase64, key, api]) => {
  const bytes = Uint8Array.from(atob(photoBase64), (c) => c.charCodeAt(0));
  const photo = new File([bytes], "photo.jpg", { type: "image/jpeg" });
  try {
    const { png, creditsRemaining } = await removeBackground(photo, key, "ghost", api);
    const bitmap = await createImageBitmap(png);
    const magic = Array.from(new Uint8Array(await png.slice(0, 8).arrayBuffer()));
    return { ok: true, type: png.type, width: bitmap.width, height: bitmap.height, magic, creditsRemaining };
  } catch (error) {
    return { ok: false, name: error.name, code: error.code, message: error.message, requestId: error.request_id };
  }
}"""

PNG_MAGIC = list(b"\x89PNG\r\n\x1a\n")


def test_browser_fetch_from_another_origin(
    browser: Browser, live_server: LiveServer, api_key: str, other_origin: str
) -> None:
    page = browser.new_page()
    page.goto(other_origin)
    assert page.evaluate("location.origin") != live_server.url, "the call must be cross-origin"
    photo = base64.b64encode(subject_image(*PHOTO_SIZE)).decode()

    result = page.evaluate(CALL_SAMPLE, [photo, api_key, live_server.url])
    assert result["ok"], result
    assert result["type"] == "image/png" and result["magic"] == PNG_MAGIC
    assert (result["width"], result["height"]) == PHOTO_SIZE
    # Readable only because the API exposes the header to other origins (CORS).
    assert result["creditsRemaining"] == 99

    refused = page.evaluate(CALL_SAMPLE, [photo, BAD_KEY, live_server.url])
    assert refused["ok"] is False and refused["code"] == "invalid_api_key", refused
    assert refused["requestId"].startswith("req_")
    page.close()


def check_security_headers(headers: dict[str, str]) -> None:
    policy = headers["content-security-policy"]
    assert "script-src 'self';" in policy and "unsafe-inline" not in policy and "frame-ancestors 'none'" in policy
    assert headers["x-content-type-options"] == "nosniff"


def open_page(browser: Browser, url: str) -> tuple[Page, list[str]]:
    """The page, and the console errors it logs: a policy violation (blocked script or style) lands there."""
    page = browser.new_page()
    errors: list[str] = []
    page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
    response = page.goto(url)
    assert response is not None
    check_security_headers(response.headers)
    return page, errors


def open_demo(browser: Browser, server: LiveServer) -> Page:
    page, errors = open_page(browser, server.url + "/demo")
    page.on("close", lambda _: assert_no_policy_violation(errors))
    return page


def assert_no_policy_violation(errors: list[str]) -> None:
    assert not [e for e in errors if "Content Security Policy" in e], errors


def test_demo_page_cuts_out_a_chosen_photo(
    browser: Browser, live_server: LiveServer, api_key: str, workdir: Path
) -> None:
    page = open_demo(browser, live_server)
    page.fill("#key", api_key)
    page.select_option("#model", "ghost")
    page.set_input_files("#file", str(workdir / "photo.jpg"))
    expect(page.locator("#before")).to_have_attribute("src", re.compile(r"^blob:"))
    page.click("#submit")

    download = page.locator("#download")
    expect(download).to_be_visible(timeout=60_000)
    expect(download).to_have_attribute("download", "photo-cutout.png")
    expect(page.locator("#status")).to_contain_text("1 credit charged, 99 credits left")
    png = page.evaluate(
        """async () => {
          const blob = await (await fetch(document.getElementById("download").href)).blob();
          const bitmap = await createImageBitmap(blob);
          return { type: blob.type, width: bitmap.width, height: bitmap.height };
        }"""
    )
    assert png == {"type": "image/png", "width": PHOTO_SIZE[0], "height": PHOTO_SIZE[1]}
    assert page.evaluate("document.getElementById('after').naturalWidth") == PHOTO_SIZE[0]
    assert live_server.balance(api_key) == 99
    page.close()


def test_demo_page_takes_a_dropped_photo_and_shows_api_errors(browser: Browser, live_server: LiveServer) -> None:
    page = open_demo(browser, live_server)
    photo = base64.b64encode(subject_image(*PHOTO_SIZE)).decode()
    page.evaluate(
        """(photoBase64) => {
          const bytes = Uint8Array.from(atob(photoBase64), (c) => c.charCodeAt(0));
          const transfer = new DataTransfer();
          transfer.items.add(new File([bytes], "dropped.jpg", { type: "image/jpeg" }));
          document.getElementById("drop").dispatchEvent(new DragEvent("drop", { dataTransfer: transfer, bubbles: true, cancelable: true }));
        }""",
        photo,
    )
    expect(page.locator("#drop-text")).to_contain_text("dropped.jpg")
    page.fill("#key", BAD_KEY)
    page.click("#submit")
    error = page.locator("#error")
    expect(error).to_be_visible(timeout=30_000)
    expect(error).to_contain_text("The API key is unknown or revoked.")
    expect(error.locator("small")).to_contain_text("invalid_api_key · req_")  # code and request id, below
    expect(page.locator("#download")).to_be_hidden()
    page.close()


def test_docs_page_renders_openapi_offline(browser: Browser, live_server: LiveServer) -> None:
    requested: list[str] = []
    page, errors = open_page(browser, live_server.url + "/docs")
    page.on("request", lambda request: requested.append(request.url))
    page.reload()
    operation = page.locator(".opblock-summary-path", has_text="/v2/rembg/mask/")
    expect(operation.first).to_be_visible(timeout=30_000)
    expect(page.locator(".opblock-summary-path", has_text="/v2/account").first).to_be_visible()
    assert f"{live_server.url}/openapi.json" in requested
    assert all(url.startswith(live_server.url) for url in requested), "no CDN, no online validator"
    assert_no_policy_violation(errors)
    page.close()
