"""Fixtures over the live-server harness (tests/harness.py), markers, and the browser.

`live_server` is one shared server for the common paths; `start_server(**env)`
starts a dedicated one with its own settings (CUTOUT_* environment) and data dir.

Markers are given by what a test uses (see pytest_collection_modifyitems): `slow` for a
server process or a browser, `browser`, `redis`; modules that start processes by other
means mark themselves. `pytest -m "not slow"` is the fast layer.
"""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from harness import MODELS_DIR, LiveServer, RedisServer

if TYPE_CHECKING:  # playwright is imported only by a test that asks for a browser
    from playwright.sync_api import Browser

    from inprocess import InProcess

# Debian's chromium (scripts/setup installs it) runs as root here, hence --no-sandbox;
# the rest keeps it off the network except for the pages a test opens.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

# Fixtures that start something, and the markers a test using them gets.
_MARKS_BY_FIXTURE = {
    "start_server": ("slow",),
    "live_server": ("slow",),
    "api_key": ("slow",),
    "browser": ("slow", "browser"),
    "start_redis": ("redis",),
    "redis_server": ("redis",),
}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        fixtures = getattr(item, "fixturenames", ())
        for mark in {mark for name in fixtures for mark in _MARKS_BY_FIXTURE.get(name, ())}:
            item.add_marker(mark)


@pytest.fixture(scope="session")
def start_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[[], RedisServer]]:
    servers: list[RedisServer] = []

    def start() -> RedisServer:
        server = RedisServer(tmp_path_factory.mktemp("redis"))
        servers.append(server)
        return server.start()

    yield start
    for server in servers:
        server.stop()


@pytest.fixture(scope="session")
def redis_server(start_redis: Callable[[], RedisServer]) -> RedisServer:
    return start_redis()


@pytest.fixture(scope="session", autouse=True)
def _weights_present() -> None:
    if not (MODELS_DIR / "u2netp.onnx").exists():
        pytest.exit("models/u2netp.onnx is missing: run `python -m app models fetch` (scripts/test does)", 2)


@pytest.fixture(scope="session")
def start_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., LiveServer]]:
    servers: list[LiveServer] = []

    def start(data_dir: Path | None = None, isnet: bool = False, **env: str) -> LiveServer:
        server = LiveServer(data_dir or tmp_path_factory.mktemp("data"), env, isnet=isnet)
        servers.append(server)
        return server.start()

    yield start
    for server in servers:
        server.stop()


@pytest.fixture(scope="session")
def live_server(start_server: Callable[..., LiveServer]) -> LiveServer:
    # No image_url fetches: schemathesis generates URLs, and no test may send a packet (not even a
    # DNS query) beyond loopback. tests/test_fetch.py starts its own fetching servers.
    return start_server(CUTOUT_FETCH_ENABLED="false")


@pytest.fixture
def api_key(live_server: LiveServer) -> str:
    return live_server.create_key(100)


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """Headless Chromium driven by Playwright; every launch gets a fresh temporary profile.

    Module-scoped: Playwright's sync API keeps an event loop running in this thread
    while it is open, and the asyncio tests of later modules need the thread free.
    """
    from playwright.sync_api import sync_playwright

    executable = shutil.which("chromium")
    if executable is None:
        pytest.fail("chromium is missing: run scripts/setup (it apt-installs it)")
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=executable, headless=True, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture(scope="session")
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="session")
async def fast_app(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[InProcess]:
    """The fast layer's shared app: in this process (tests/inprocess.py), ghost and falcon loaded,
    with low limits (inprocess.MAX_BODY_BYTES, MAX_SIDE, BODY_TIMEOUT_S)."""
    from inprocess import BODY_TIMEOUT_S, MAX_BODY_BYTES, MAX_SIDE, fast_settings, running

    settings = fast_settings(
        tmp_path_factory.mktemp("fast"),
        models=("ghost", "falcon"),
        max_body_bytes=MAX_BODY_BYTES,
        max_side=MAX_SIDE,
        body_timeout_s=BODY_TIMEOUT_S,
    )
    async with running(settings) as app:
        yield app
