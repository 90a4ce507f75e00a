"""Helpers of the asynchronous jobs' tests (tests/test_jobs*.py): a webhook receiver on loopback,
and submitting a job and polling it to its end through a live server (tests/harness.py)."""

from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import requests

from harness import LiveServer, subject_image, wait_until

TINY = subject_image(64, 48)
LOOPBACK = '["127.0.0.1/32"]'


class Receiver:
    """A webhook target on loopback: records each POST; answers the statuses given, then 200."""

    def __init__(self, statuses: list[int] | None = None) -> None:
        self.received: list[tuple[dict[str, str], bytes, float]] = []
        self.statuses = list(statuses or [])
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.received.append(({k.lower(): v for k, v in self.headers.items()}, body, time.monotonic()))
                self.send_response(receiver.statuses.pop(0) if receiver.statuses else 200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def submit(server: LiveServer, key: str, image: bytes = TINY, **kwargs: Any) -> requests.Response:
    headers = {"Prefer": "respond-async", **kwargs.pop("headers", {})}
    return server.remove(key, image, model="ghost", headers=headers, **kwargs)


def job_of(server: LiveServer, key: str, location: str) -> dict[str, Any]:
    response = requests.get(server.url + location, headers={"ApiKey": key}, timeout=10)
    assert response.status_code == 200, response.text
    return response.json()


def finished(server: LiveServer, key: str, location: str, timeout_s: float = 60) -> dict[str, Any]:
    seen: dict[str, Any] = {}

    def done() -> bool:
        seen.update(job_of(server, key, location))
        return seen["status"] in ("succeeded", "failed", "cancelled", "expired", "completed")

    wait_until(done, timeout_s, f"{location} to finish")
    return seen
