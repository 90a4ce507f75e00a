"""What the operator meets: the key commands (unlimited keys, labels, the limit in force, deducts
that refuse to go below zero, rotation), the --help texts, the start-up log naming /demo and /docs,
probes kept out of the info log, one metric route per route whatever its spelling, and GET /.

The key commands run against both stores in tests/test_redis_service.py::test_key_commands; here
they run on the default (SQLite) server, through the real CLI and a real server process."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable

import pytest
import requests

from harness import ROOT, LiveServer, assert_error, png_of, subject_image


def account_of(server: LiveServer, key: str) -> dict[str, object]:
    response = requests.get(server.url + "/v2/account", headers={"ApiKey": key}, timeout=10)
    assert response.status_code == 200, response.text
    return response.json()


def listed(server: LiveServer, account_id: str) -> dict[str, object]:
    lines = [json.loads(line) for line in server.cli("keys", "list").stdout.splitlines()]
    return next(line for line in lines if line["account_id"] == account_id)


def test_an_unlimited_labelled_key_is_never_charged(live_server: LiveServer) -> None:
    created = live_server.cli("keys", "create", "--unlimited", "--label", "Acme shop (staging)")
    assert created.returncode == 0, created.stderr
    assert "unlimited" in created.stderr and "Acme shop (staging)" in created.stderr
    key = created.stdout.strip().splitlines()[-1]
    body = account_of(live_server, key)
    assert body["unlimited"] is True

    for _ in range(2):  # a balance of 0, and still served
        response = live_server.remove(key, subject_image(160, 120), model="ghost")
        assert response.status_code == 200, response.text
        assert response.headers["X-Credits-Charged"] == "0"
        assert "X-Credits-Remaining" not in response.headers, "no balance to count down"
        assert png_of(response.content).size == (160, 120)

    entry = listed(live_server, str(body["account_id"]))
    assert entry["label"] == "Acme shop (staging)" and entry["unlimited"] is True and entry["credits"] == 0


def test_keys_create_needs_credits_or_unlimited_and_checks_the_label(live_server: LiveServer) -> None:
    for args, said in (
        ((), "one of the arguments --credits --unlimited is required"),
        (("--credits", "5", "--unlimited"), "not allowed with argument"),
        (("--credits", "5", "--label", "x" * 101), "a label is up to 100 printable characters"),
        (("--credits", "5", "--label", "two\nlines"), "a label is up to 100 printable characters"),
    ):
        result = live_server.cli("keys", "create", *args)
        assert result.returncode == 2 and said in result.stderr and "Traceback" not in result.stderr, result.stderr


def test_keys_list_shows_the_limit_in_force_and_labels_can_change(live_server: LiveServer) -> None:
    key = live_server.create_key(5, "--plan", "pro")
    account_id = str(account_of(live_server, key)["account_id"])
    entry = listed(live_server, account_id)
    plan_limit = account_of(live_server, key)["rate_limit"]
    assert entry["rate_limit"] == plan_limit and entry["rate_limit_from"] == "plan" and plan_limit
    assert entry["label"] is None and entry["unlimited"] is False

    assert live_server.cli("keys", "set-plan", account_id, "pro", "--rate", "7/minute").returncode == 0
    assert (listed(live_server, account_id)["rate_limit"], listed(live_server, account_id)["rate_limit_from"]) == (
        "7/minute",
        "account",
    )
    assert live_server.cli("keys", "label", account_id, "Beta app").stdout.strip() == f"{account_id}: label 'Beta app'"
    assert listed(live_server, account_id)["label"] == "Beta app"
    assert live_server.cli("keys", "label", account_id).returncode == 0
    assert listed(live_server, account_id)["label"] is None
    missing = live_server.cli("keys", "label", "acct_missing", "x")
    assert missing.returncode == 1 and "no account 'acct_missing'" in missing.stderr


def test_deduct_refuses_to_go_below_zero_unless_clamped(live_server: LiveServer) -> None:
    key = live_server.create_key(5)
    account_id = str(account_of(live_server, key)["account_id"])
    refused = live_server.cli("keys", "deduct", account_id, "10")
    assert refused.returncode == 1 and refused.stdout == ""
    assert f"{account_id} has 5 credits: deducting 10 would go below zero" in refused.stderr
    assert "--clamp" in refused.stderr and "Traceback" not in refused.stderr
    assert live_server.balance(key) == 5, "nothing changed"
    assert live_server.cli("keys", "deduct", account_id, "3").stdout.strip() == "2"
    assert live_server.cli("keys", "deduct", account_id, "10", "--clamp").stdout.strip() == "0"
    assert live_server.balance(key) == 0


def test_rotate_gives_a_new_key_to_the_same_account(live_server: LiveServer) -> None:
    old = live_server.create_key(4, "--label", "rotating")
    account_id = str(account_of(live_server, old)["account_id"])
    rotated = live_server.cli("keys", "rotate", account_id)
    assert rotated.returncode == 0, rotated.stderr
    new = rotated.stdout.strip().splitlines()[-1]
    assert new.startswith("co_") and new != old and "old one is refused" in rotated.stderr
    assert_error(live_server.remove(old, subject_image(64, 48), model="ghost"), 401, "invalid_api_key")
    body = account_of(live_server, new)
    assert (body["account_id"], body["credits"]) == (account_id, 4)
    assert listed(live_server, account_id)["label"] == "rotating"
    assert live_server.remove(new, subject_image(64, 48), model="ghost").status_code == 200

    assert live_server.cli("keys", "revoke", account_id).returncode == 0
    refused = live_server.cli("keys", "rotate", account_id)
    assert refused.returncode == 1 and "is revoked" in refused.stderr
    missing = live_server.cli("keys", "rotate", "acct_missing")
    assert missing.returncode == 1 and "no account 'acct_missing'" in missing.stderr


@pytest.mark.parametrize(
    ("command", "said"),
    [
        ((), ("serve", "keys", "models", "Start with: python -m app keys create --unlimited")),
        (("serve",), ("/demo", "/docs", "CUTOUT_", "SIGTERM", "default: CUTOUT_PORT, else 8000")),
        (("keys",), ("rotate", "label", "printed once")),
        (("keys", "create"), ("--unlimited", "--credits", "--label", "One of the two is required")),
        (("keys", "deduct"), ("--clamp", "refused")),
        (("keys", "list"), ("rate_limit_from", "in force")),
        (("keys", "rotate"), ("old key stops working",)),
    ],
)
def test_help_texts_explain_each_command(command: tuple[str, ...], said: tuple[str, ...]) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "app", *command, "--help"], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    text = " ".join(result.stdout.split())  # argparse wraps lines
    for words in said:
        assert " ".join(words.split()) in text, (words, result.stdout)


def test_log_names_the_pages_and_keeps_probes_out_of_the_info_log(start_server: Callable[..., LiveServer]) -> None:
    server = start_server(CUTOUT_LOG_LEVEL="info")
    lines = [json.loads(line) for line in server.log().splitlines()]
    pages = next(line for line in lines if line["message"].startswith("demo page:"))
    assert pages["demo_url"] == f"http://127.0.0.1:{server.port}/demo"
    assert pages["docs_url"] == f"http://127.0.0.1:{server.port}/docs"
    assert requests.get(pages["demo_url"], timeout=10).status_code == 200

    for path in ("/ready", "/health", "/metrics", "/ready"):
        assert requests.get(server.url + path, timeout=10).status_code == 200
    marker = requests.get(server.url + "/v2/account/", timeout=10)  # logged: not a probe
    assert_error(marker, 401, "invalid_api_key")
    request_id = marker.headers["X-Request-ID"]
    # The access line is written once the response has gone out: the client can read the answer first.
    deadline = time.monotonic() + 5
    while True:
        access = [line for line in map(json.loads, server.log().splitlines()) if line.get("message") == "access"]
        if any(line["request_id"] == request_id for line in access) or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert any(line["request_id"] == request_id for line in access), "the log is written"
    assert [line["path"] for line in access if line["path"] in ("/ready", "/health", "/metrics")] == []


def test_one_route_label_per_route_and_no_redirects(live_server: LiveServer) -> None:
    key = live_server.create_key(10)
    for path in ("/v2/rembg/mask", "/v2/rembg/mask/", "/v2/rembg", "/v2/rembg/"):
        assert live_server.remove(key, subject_image(64, 48), model="ghost", path=path).status_code == 200
    for path in ("/v2/account", "/v2/account/"):
        response = requests.get(live_server.url + path, headers={"ApiKey": key}, timeout=10, allow_redirects=False)
        assert response.status_code == 200 and response.json()["credits"] == 6, path
    metrics = requests.get(live_server.url + "/metrics", timeout=10).text
    routes = {
        line.split('route="')[1].split('"')[0]
        for line in metrics.splitlines()
        if line.startswith("cutout_requests_total{")
    }
    assert {"/v2/rembg/", "/v2/rembg/mask/", "/v2/account"} <= routes
    assert not routes & {"/v2/rembg", "/v2/rembg/mask", "/v2/account/"}, routes


def test_the_root_points_to_the_demo_and_the_docs(live_server: LiveServer) -> None:
    plain = requests.get(live_server.url + "/", timeout=10)
    assert plain.status_code == 200 and plain.headers["content-type"] == "application/json"
    assert (plain.json()["demo"], plain.json()["docs"]) == ("/demo", "/docs")
    browser = requests.get(live_server.url + "/", headers={"Accept": "text/html,*/*;q=0.8"}, timeout=10)
    assert browser.status_code == 200 and browser.headers["content-type"].startswith("text/html")
    assert 'href="demo"' in browser.text and 'href="docs"' in browser.text
    assert browser.headers["Content-Security-Policy"].startswith("default-src 'self'")
