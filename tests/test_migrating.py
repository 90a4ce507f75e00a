"""docs/migrating.md's "Cutout" calls, run as they are written against a live server (curl in bash,
the photo served on loopback for fal's image_url), and each answer checked."""

from __future__ import annotations

import functools
import http.server
import json
import os
import re
import subprocess
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from harness import ROOT, LiveServer, free_port, png_of, subject_image

PAGE = ROOT / "docs" / "migrating.md"
PHOTO_SIZE = (400, 300)
# The blocks the page marks as ours: a shell block whose first line is "# cutout: ...".
BLOCKS = re.findall(r"```sh\n(# cutout:[^\n]*\n.*?)```", PAGE.read_text(), re.S)


def test_the_page_has_a_call_for_each_api() -> None:
    headings = re.findall(r"^## (.+)$", PAGE.read_text(), re.M)
    assert {"remove.bg", "PhotoRoom", "fal", "rembg s"} <= set(headings)
    assert len(BLOCKS) >= 6


@pytest.fixture(scope="module")
def photo_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, str]]:
    """A folder holding photo.jpg, served on loopback (fal's call fetches it by URL)."""
    folder = tmp_path_factory.mktemp("photos")
    (folder / "photo.jpg").write_bytes(subject_image(*PHOTO_SIZE))
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield folder, f"http://127.0.0.1:{server.server_address[1]}/photo.jpg"
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def fetching_server(start_server: Callable[..., LiveServer]) -> Iterator[LiveServer]:
    server = start_server(CUTOUT_FETCH_ALLOW='["127.0.0.1/32"]')
    yield server
    server.stop()  # its memory back when the module ends, not at the session's end


def _check(path: Path) -> None:
    data = path.read_bytes()
    if path.suffix == ".json":
        image = json.loads(data)["image"]
        assert image["url"].startswith("data:image/png;base64,") and (image["width"], image["height"]) == PHOTO_SIZE
    elif path.suffix in (".png", ".jpg", ".webp"):
        assert png_of(data).width > 0
        if "mask" in path.name:
            assert png_of(data).mode == "L", path.name


@pytest.mark.parametrize("block", BLOCKS, ids=[block.splitlines()[0][len("# cutout: ") :] for block in BLOCKS])
def test_each_cutout_call_works_as_written(
    block: str, fetching_server: LiveServer, photo_dir: tuple[Path, str], tmp_path: Path
) -> None:
    folder, photo_url = photo_dir
    (tmp_path / "photo.jpg").write_bytes((folder / "photo.jpg").read_bytes())
    key = fetching_server.create_key(100)
    env = {**os.environ, "CUTOUT_URL": fetching_server.url, "CUTOUT_API_KEY": key, "PHOTO_URL": photo_url}
    result = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", block], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    written = sorted(path for path in tmp_path.iterdir() if path.name.startswith("out"))
    assert written, "the call wrote its answer"
    for path in written:
        _check(path)
    assert fetching_server.balance(key) < 100, "charged: real cut-outs"
    if "x-foreground-" in block:
        assert re.search(r"^x-foreground-left: \d+", result.stdout, re.M | re.I), result.stdout
