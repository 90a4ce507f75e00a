"""The fast layer's harness: the app in this process (`create_app` and its lifespan, real weights),
spoken to through httpx's ASGITransport: no server process, no socket.

Settings keep the models a test names (ghost by default, which starts in about a second; falcon
adds IS-Net's compile and ghost, which it joins).
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from starlette.applications import Starlette

from app.errors import ERROR_CODES
from app.main import create_app
from app.services import Services
from app.settings import Settings

MODELS_DIR = Path(__file__).resolve().parent.parent / "models"
# The shared fast app's limits: low, so that the error tests reach them with small uploads.
MAX_BODY_BYTES = 1_000_000
MAX_SIDE = 2000
BODY_TIMEOUT_S = 0.3
CLIENT = ("203.0.113.7", 50000)  # the address the app sees (rate limits count per address)
BASE_URL = "http://cutout.test"


class _AccessLog(logging.Handler):
    """The access log lines this process wrote, by request id."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: dict[str, logging.LogRecord] = {}

    def emit(self, record: logging.LogRecord) -> None:
        self.lines[getattr(record, "request_id", "")] = record


ACCESS_LOG = _AccessLog()
logging.getLogger("cutout.access").addHandler(ACCESS_LOG)
logging.getLogger("cutout.access").setLevel(logging.INFO)


def fast_settings(data_dir: Path, models: tuple[str, ...] = ("ghost",), **overrides: Any) -> Settings:
    """The configured settings with the given data dir and overrides, and only the named models."""
    settings = Settings(data_dir=data_dir, models_dir=MODELS_DIR, **overrides)
    # Not through the constructor: pydantic-settings merges a dict given there into the TOML's.
    return settings.only_models(models).model_copy(update={"default_model": models[0] if models else ""})


def client_for(app: Starlette) -> httpx.AsyncClient:
    # raise_app_exceptions=False: an unexpected error reaches us as the 500 a client would see.
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False, client=CLIENT)
    return httpx.AsyncClient(transport=transport, base_url=BASE_URL, timeout=60)


@dataclass
class InProcess:
    app: Starlette
    client: httpx.AsyncClient

    @property
    def services(self) -> Services:
        return self.app.state.services

    async def key(self, credits: int = 100, rate_limit: str | None = None) -> str:
        _, key = await self.services.store.create_account(credits=credits, plan="free", rate_limit=rate_limit)
        return key


@contextlib.asynccontextmanager
async def running(settings: Settings) -> AsyncIterator[InProcess]:
    """The app with its lifespan run (models loaded and warmed, store open), and a client on it."""
    app = create_app(settings)
    async with app.router.lifespan_context(app), client_for(app) as client:
        yield InProcess(app, client)


def check_error(status: int, headers: httpx.Headers, body: bytes, code: str) -> dict[str, Any]:
    """Our error contract, with the status and the Retry-After rule taken from ERROR_CODES."""
    spec = ERROR_CODES[code]
    assert status == spec.status, (status, body[:300])
    assert headers["content-type"].startswith("application/json")
    document = json.loads(body)
    error = document["error"]
    assert set(error) == {"code", "message", "request_id"}
    assert error["code"] == code, document
    assert error["message"] and "Traceback" not in error["message"]
    assert error["request_id"].startswith("req_")
    assert headers["x-request-id"] == error["request_id"]
    if spec.retry_after:
        assert int(headers["retry-after"]) >= 1
    # The access log line (and the metrics beside it) got the code from the request's typed info.
    line = ACCESS_LOG.lines[error["request_id"]]
    assert (line.status, line.error_code) == (status, code)  # type: ignore[attr-defined]
    return document


def check_response(response: httpx.Response, code: str) -> dict[str, Any]:
    return check_error(response.status_code, response.headers, response.content, code)
