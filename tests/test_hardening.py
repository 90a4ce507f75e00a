"""The small things a hostile probe found, through a real uvicorn: security headers on the pages,
private data files, validated credit amounts, short 404 bodies, CORS refusals in our shape, and
an idempotent request cut off by a crash becoming retryable once the sweeper frees it.
"""

from __future__ import annotations

import contextlib
import stat
import threading
import time
from collections.abc import Callable

import pytest
import requests

from harness import LiveServer, assert_error, subject_image

# Reservations are swept this soon; a live job (a 12 MP mask, ~1 s) must stay well under it.
TTL_S = 5.0


@pytest.fixture(scope="module")
def server(start_server: Callable[..., LiveServer]) -> LiveServer:
    return start_server(CUTOUT_RESERVATION_TTL_S=str(TTL_S), CUTOUT_CORS_ORIGINS='["https://shop.example"]')


def test_pages_send_security_headers(server: LiveServer) -> None:
    for path in ("/demo", "/docs"):
        response = requests.get(server.url + path, timeout=10)
        policy = response.headers["Content-Security-Policy"]
        assert "script-src 'self';" in policy and "unsafe-inline" not in policy
        assert "frame-ancestors 'none'" in policy
        assert response.headers["X-Content-Type-Options"] == "nosniff"
        assert response.headers["X-Frame-Options"] == "DENY"
        assert "<script>" not in response.text and "<style>" not in response.text


def test_data_dir_and_database_files_are_private(server: LiveServer) -> None:
    assert stat.S_IMODE(server.data_dir.stat().st_mode) == 0o700
    files = sorted(server.data_dir.glob("cutout.sqlite3*"))
    assert files, "the database exists"
    for path in files:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path


def test_credit_amounts_are_validated(server: LiveServer) -> None:
    key = server.create_key(10)
    account = requests.get(server.url + "/v2/account", headers={"ApiKey": key}, timeout=10).json()["account_id"]
    for args in (
        ("grant", account, "-10"),
        ("deduct", account, "-50"),
        ("grant", account, "0"),
        ("grant", account, "99999999999999999999"),
        ("grant", account, "ten"),
    ):
        result = server.cli("keys", *args)
        assert result.returncode == 2, args
        assert "is not a whole number from 1 to" in result.stderr and "Traceback" not in result.stderr
    result = server.cli("keys", "create", "--credits", "-1")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert server.balance(key) == 10
    assert server.cli("keys", "grant", account, "5").stdout.strip() == "15"


def test_404_does_not_echo_a_long_path(server: LiveServer) -> None:
    response = requests.get(server.url + "/" + "a" * 10_000, timeout=10)
    body = assert_error(response, 404, "not_found")
    assert len(response.content) < 600 and len(body["error"]["message"]) < 200


def test_refused_cors_preflight_is_in_our_shape(server: LiveServer) -> None:
    preflight = {"Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "apikey"}
    allowed = requests.options(
        server.url + "/v2/rembg/", headers={**preflight, "Origin": "https://shop.example"}, timeout=10
    )
    assert allowed.status_code == 200
    refused = requests.options(
        server.url + "/v2/rembg/", headers={**preflight, "Origin": "https://evil.example"}, timeout=10
    )
    body = assert_error(refused, 400, "invalid_parameter")
    assert "CORS" in body["error"]["message"] and "Access-Control-Allow-Origin" not in refused.headers


def test_an_idempotent_request_cut_off_by_a_crash_is_retryable_after_the_sweep(server: LiveServer) -> None:
    key = server.create_key(10, "--rate", "1000/minute")
    photo = subject_image(4000, 3000)
    headers = {"Idempotency-Key": "crash-test-1"}
    send = lambda: server.remove(key, photo, "falcon", path="/v2/rembg/mask/", headers=headers)  # noqa: E731
    thread = threading.Thread(target=lambda: _ignore_errors(send))
    thread.start()
    deadline = time.monotonic() + 30
    while server.balance(key) == 10 and time.monotonic() < deadline:  # reserved: the job is running
        time.sleep(0.02)
    assert server.balance(key) == 9
    assert server.process is not None
    server.process.kill()  # kill -9: no refund, no answer
    server.process.wait()
    thread.join()
    server.start()
    crashed_at = time.monotonic()
    while True:
        retry = send()
        if retry.status_code != 409:
            break
        assert_error(retry, 409, "idempotency_key_in_use")
        assert time.monotonic() - crashed_at < TTL_S + TTL_S / 2 + 10, "still in use long after the sweep"
        time.sleep(0.5)
    assert retry.status_code == 200, retry.text[:300]
    print(f"retryable {time.monotonic() - crashed_at:.1f} s after the restart (ttl {TTL_S:g} s)")
    assert server.balance(key) == 9, "charged once: the crashed attempt was refunded"


def _ignore_errors(fn: Callable[[], object]) -> None:
    with contextlib.suppress(requests.RequestException):  # the server was killed under it
        fn()
