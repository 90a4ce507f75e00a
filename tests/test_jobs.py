"""Asynchronous jobs and batches (app/jobs/) through real uvicorn servers on the embedded engine:
submission, status, results, credits, cancel, expiry, Idempotency-Key, batches and their ZIP,
and Standard Webhooks deliveries received on loopback and verified with the `standardwebhooks`
package (an implementation independent of ours). Redis and kill -9: tests/test_jobs_redis.py.
"""

from __future__ import annotations

import base64
import io
import json
import subprocess
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import requests
from jobs_harness import LOOPBACK, TINY, Receiver, finished, job_of, submit
from standardwebhooks import Webhook, WebhookVerificationError

from harness import LiveServer, assert_error, free_port, png_of, subject_image, wait_until


@pytest.fixture(scope="module")
def server(start_server: Callable[..., LiveServer]) -> LiveServer:
    # Webhooks to loopback are allowed here (fetch_allow), and retried fast.
    return start_server(
        CUTOUT_FETCH_ALLOW=LOOPBACK,
        CUTOUT_BATCH_MAX_ITEMS="4",
        CUTOUT_WEBHOOK_BACKOFF_S="0.2",
        CUTOUT_WEBHOOK_RETRY_S="1.5",
        CUTOUT_WEBHOOK_TIMEOUT_S="2",
    )


@pytest.fixture(scope="module")
def idle(start_server: Callable[..., LiveServer]) -> LiveServer:
    """Runs no job (job_workers 0): what is submitted stays queued until cancelled or expired (3 s);
    loopback webhook targets are refused (no fetch_allow)."""
    return start_server(CUTOUT_JOB_WORKERS="0", CUTOUT_JOB_TTL_S="3")


def test_async_job_is_accepted_at_once_and_charged_on_delivery(server: LiveServer) -> None:
    key = server.create_key(10)
    response = submit(server, key, fields={"output_format": "webp"})
    assert response.status_code == 202, response.text
    job = response.json()
    assert response.headers["location"] == f"/v2/jobs/{job['id']}" == job["url"]
    assert response.headers["preference-applied"] == "respond-async"
    assert job["status"] in ("queued", "running") and "result_url" not in job
    assert server.balance(key) == 9  # reserved at submission

    done = finished(server, key, response.headers["location"])
    assert done["status"] == "succeeded" and done["credits_charged"] == 1, done
    result = requests.get(server.url + done["result_url"], headers={"ApiKey": key}, timeout=10)
    assert result.status_code == 200 and result.headers["content-type"] == "image/webp"
    assert png_of(result.content).size == (64, 48)  # Pillow reads the WebP
    # The same bytes as the synchronous answer: the same planning and rendering.
    sync = server.remove(key, TINY, model="ghost", fields={"output_format": "webp"})
    assert sync.status_code == 200 and sync.content == result.content
    assert server.balance(key) == 8

    # webhook_url alone makes a request asynchronous too (no Prefer header).
    response = server.remove(
        key, TINY, model="ghost", path="/v2/rembg/mask/", fields={"webhook_url": "http://127.0.0.1:9/"}
    )
    assert response.status_code == 202 and response.json()["output"] == "mask"


def test_another_accounts_job_and_an_unknown_one_are_404(server: LiveServer) -> None:
    owner, other = server.create_key(5), server.create_key(5)
    location = submit(server, owner).headers["location"]
    for method, path in (("GET", location), ("GET", location + "/result"), ("DELETE", location)):
        assert_error(
            requests.request(method, server.url + path, headers={"ApiKey": other}, timeout=10), 404, "job_not_found"
        )
    assert_error(
        requests.get(server.url + "/v2/jobs/job_nope", headers={"ApiKey": owner}, timeout=10), 404, "job_not_found"
    )
    assert_error(requests.get(server.url + location), 401, "invalid_api_key")
    assert finished(server, owner, location)["status"] == "succeeded"
    assert server.balance(other) == 5


def test_cancel_refunds_a_queued_job_and_an_unrun_job_expires_refunded(idle: LiveServer) -> None:
    key = idle.create_key(3)
    first, second = submit(idle, key), submit(idle, key)
    assert idle.balance(key) == 1
    assert second.json()["position"] == 1  # one queued ahead of it
    cancelled = requests.delete(idle.url + first.headers["location"], headers={"ApiKey": key}, timeout=10)
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
    assert idle.balance(key) == 2
    again = requests.delete(idle.url + first.headers["location"], headers={"ApiKey": key}, timeout=10)
    assert_error(again, 409, "job_not_cancellable")
    result = requests.get(idle.url + first.headers["location"] + "/result", headers={"ApiKey": key}, timeout=10)
    assert_error(result, 409, "result_not_ready")
    # Nobody runs the second one: after job_ttl_s it expires and its credit comes back.
    assert finished(idle, key, second.headers["location"], timeout_s=15)["status"] == "expired"
    assert idle.balance(key) == 3


def test_idempotency_key_on_submissions(server: LiveServer) -> None:
    key = server.create_key(5)
    headers = {"Idempotency-Key": "submit-1"}
    first = submit(server, key, headers=headers)
    second = submit(server, key, headers=headers)
    assert first.status_code == second.status_code == 202
    assert first.json()["id"] == second.json()["id"] and second.headers["idempotent-replayed"] == "true"
    finished(server, key, first.headers["location"])
    assert server.balance(key) == 4
    assert_error(submit(server, key, image=subject_image(50, 40), headers=headers), 422, "idempotency_key_reused")


def test_multipart_batch_one_bad_item_fails_alone_and_zip(server: LiveServer) -> None:
    key = server.create_key(10)
    files = [
        ("images", ("one.jpg", TINY, "image/jpeg")),
        ("images", ("broken.jpg", b"not an image", "image/jpeg")),
        ("images", ("two.png", subject_image(40, 30, "PNG"), "image/png")),
    ]
    overrides = json.dumps([None, None, {"output_format": "jpeg", "bg_color": "white"}])
    response = requests.post(
        server.url + "/v2/batches",
        headers={"ApiKey": key},
        files=files,
        data={"model": "ghost", "overrides": overrides},
        timeout=30,
    )
    assert response.status_code == 202, response.text
    assert response.headers["location"] == response.json()["url"]
    assert server.balance(key) == 7
    batch = finished(server, key, response.headers["location"])
    assert batch["status"] == "completed" and batch["counts"]["succeeded"] == 2 and batch["counts"]["failed"] == 1
    good, bad, jpeg = batch["items"]
    assert [item["name"] for item in batch["items"]] == ["one.jpg", "broken.jpg", "two.png"]
    assert bad["status"] == "failed" and bad["error"]["code"] == "invalid_image" and bad["credits_charged"] == 0
    assert jpeg["content_type"] == "image/jpeg" and good["content_type"] == "image/png"
    assert server.balance(key) == 8  # two charged, the bad item's credit back
    archive = requests.get(server.url + batch["zip_url"], headers={"ApiKey": key}, timeout=10)
    assert archive.status_code == 200 and archive.headers["content-type"] == "application/zip"
    with zipfile.ZipFile(io.BytesIO(archive.content)) as opened:
        assert sorted(opened.namelist()) == ["one.png", "two.jpg"]
        assert png_of(opened.read("one.png")).mode == "RGBA"


def test_json_batch_with_a_bad_item_and_per_item_overrides(server: LiveServer) -> None:
    key = server.create_key(10)
    uri = "data:image/jpeg;base64," + base64.b64encode(TINY).decode()
    body = {
        "model": "ghost",
        "items": [
            {"image_data_uri": uri, "name": "a.jpg"},
            {"image_data_uri": "data:image/jpeg;base64,@@@"},
            {"image_data_uri": uri, "output": "mask", "output_format": "webp"},
        ],
    }
    response = requests.post(server.url + "/v2/batches", headers={"ApiKey": key}, json=body, timeout=30)
    assert response.status_code == 202, response.text
    bad = response.json()["items"][1]
    assert (
        bad["status"] == "failed" and bad["error"]["code"] == "invalid_image" and "items[1]" in bad["error"]["message"]
    )
    batch = finished(server, key, response.headers["location"])
    first, _, mask = batch["items"]
    assert first["status"] == mask["status"] == "succeeded" and first["name"] == "a.jpg"
    assert mask["output"] == "mask" and mask["content_type"] == "image/webp"
    assert server.balance(key) == 8  # the bad item was never reserved


def test_batch_refused_whole_too_many_items_402_and_bad_options(server: LiveServer) -> None:
    key = server.create_key(2)
    files = [("images", (f"{i}.jpg", TINY, "image/jpeg")) for i in range(5)]
    post = lambda **kw: requests.post(server.url + "/v2/batches", headers={"ApiKey": key}, timeout=30, **kw)  # noqa: E731
    assert_error(post(files=files), 400, "too_many_items")
    assert_error(post(json={"items": []}), 400, "too_many_items")
    # Three items, two credits: refused whole before anything runs.
    body = assert_error(post(files=files[:3], data={"model": "ghost"}), 402, "insufficient_credits")
    assert "3 items costs 3 credits" in body["error"]["message"]
    assert_error(post(files=files[:2], data={"model": "ghost", "bg_blur": "-3"}), 400, "invalid_parameter")
    assert_error(post(files=files[:1], data={"colour": "red"}), 400, "invalid_parameter")
    assert_error(post(data={"x": "1"}), 400, "invalid_parameter")
    assert server.balance(key) == 2


def test_foreign_batch_is_404(server: LiveServer) -> None:
    owner, other = server.create_key(5), server.create_key(5)
    response = requests.post(
        server.url + "/v2/batches", headers={"ApiKey": owner}, json={"items": [{"image_data_uri": "x"}]}, timeout=10
    )
    location = response.headers["location"]
    for method, path in (("GET", location), ("GET", location + "/zip"), ("DELETE", location)):
        assert_error(
            requests.request(method, server.url + path, headers={"ApiKey": other}, timeout=10), 404, "job_not_found"
        )


def test_webhook_is_signed_per_standard_webhooks_retried_and_recorded(server: LiveServer) -> None:
    key = server.create_key(5)
    target = Receiver(statuses=[500])  # the first attempt is refused: retried after the backoff
    try:
        response = submit(server, key, fields={"webhook_url": target.url})
        location = response.headers["location"]
        wait_until(lambda: len(target.received) >= 2, 30, "the webhook and its retry")
        secret = requests.get(server.url + "/v2/account", headers={"ApiKey": key}, timeout=10).json()["webhook_secret"]
        assert secret.startswith("whsec_") and len(base64.b64decode(secret[6:])) >= 24
        first, second = target.received[:2]
        for headers, body, _ in (first, second):
            event = Webhook(secret).verify(body, headers)  # raises on a bad signature or timestamp
            assert event["type"] == "job.succeeded" and event["data"]["id"] == response.json()["id"]
        assert first[0]["webhook-id"] == second[0]["webhook-id"]  # one message, delivered twice
        assert second[2] - first[2] >= 0.15  # the backoff
        with pytest.raises(WebhookVerificationError):
            Webhook(secret).verify(first[1] + b" ", first[0])
        job = job_of(server, key, location)
        assert job["webhook"]["state"] == "delivered" and job["webhook"]["attempt_count"] == 2
        assert [a["status"] for a in job["webhook"]["attempts"]] == [500, 200]
    finally:
        target.close()


def test_each_batch_item_and_the_batch_send_their_own_signed_webhook(server: LiveServer) -> None:
    key = server.create_key(5)
    target = Receiver(statuses=[500])  # the first delivery, whichever it is, is refused: retried
    try:
        files = [
            ("images", ("a.jpg", TINY, "image/jpeg")),
            ("images", ("broken.jpg", b"not an image", "image/jpeg")),  # fails at submission
            ("images", ("b.jpg", TINY, "image/jpeg")),
        ]
        response = requests.post(
            server.url + "/v2/batches",
            headers={"ApiKey": key},
            files=files,
            data={"model": "ghost", "webhook_url": target.url},
            timeout=30,
        )
        assert response.status_code == 202, response.text
        batch_id, items = response.json()["id"], response.json()["items"]
        expected = {
            f"msg_job_{items[0]['id']}": "job.succeeded",
            f"msg_job_{items[1]['id']}": "job.failed",
            f"msg_job_{items[2]['id']}": "job.succeeded",
            f"msg_batch_{batch_id}": "batch.completed",
        }
        wait_until(lambda: len(target.received) >= len(expected) + 1, 30, "four webhooks and one retry")
        events = _verified_by_message(server, key, target)
        assert {msg_id: [e["type"] for e in sent][-1] for msg_id, sent in events.items()} == expected
        assert sorted(len(sent) for sent in events.values()) == [1, 1, 1, 2]  # the refused one, sent again
        for item in items:
            assert events[f"msg_job_{item['id']}"][-1]["data"]["id"] == item["id"]
        counts = events[f"msg_batch_{batch_id}"][-1]["data"]["counts"]
        assert counts["succeeded"] == 2 and counts["failed"] == 1 and sum(counts.values()) == 3

        def recorded() -> dict[str, Any]:
            return job_of(server, key, response.headers["location"])

        # Every attempt recorded on its own job (and on the batch), as for a single job.
        wait_until(
            lambda: all(hook["state"] == "delivered" for hook in _hooks(recorded())), 30, "every webhook recorded"
        )
        assert sorted(hook["attempt_count"] for hook in _hooks(recorded())) == [1, 1, 1, 2]
    finally:
        target.close()


def _verified_by_message(server: LiveServer, key: str, target: Receiver) -> dict[str, list[dict[str, Any]]]:
    """Each delivery verified with the account's secret (raises on a bad signature), by webhook-id."""
    secret = requests.get(server.url + "/v2/account", headers={"ApiKey": key}, timeout=10).json()["webhook_secret"]
    events: dict[str, list[dict[str, Any]]] = {}
    for headers, body, _ in target.received:
        events.setdefault(headers["webhook-id"], []).append(Webhook(secret).verify(body, headers))
    return events


def _hooks(batch: dict[str, Any]) -> list[dict[str, Any]]:
    return [batch["webhook"], *(item["webhook"] for item in batch["items"])]


def test_unreachable_webhook_is_retried_then_recorded_failed(server: LiveServer) -> None:
    key = server.create_key(5)
    dead = f"http://127.0.0.1:{free_port()}/hook"  # nothing listens there
    location = submit(server, key, fields={"webhook_url": dead}).headers["location"]
    wait_until(lambda: job_of(server, key, location).get("webhook", {}).get("state") == "failed", 30, "webhook failed")
    hook = job_of(server, key, location)["webhook"]
    assert hook["attempt_count"] >= 2 and all(a["status"] is None and a["error"] for a in hook["attempts"])
    assert job_of(server, key, location)["status"] == "succeeded"  # the job itself is delivered and charged
    assert server.balance(key) == 4


def test_refused_webhook_target_is_a_400_and_costs_nothing(idle: LiveServer) -> None:
    key = idle.create_key(2)
    for url in ("http://127.0.0.1:8080/hook", "http://10.0.0.1/hook", "ftp://example.com/x", "http://[::1]/"):
        assert_error(submit(idle, key, fields={"webhook_url": url}), 400, "webhook_url_forbidden")
    response = requests.post(
        idle.url + "/v2/batches",
        headers={"ApiKey": key},
        json={"items": [{"image_data_uri": "x"}], "webhook_url": "http://169.254.169.254/latest"},
        timeout=10,
    )
    assert_error(response, 400, "webhook_url_forbidden")
    assert idle.balance(key) == 2


def test_metrics_count_jobs_and_webhooks(server: LiveServer) -> None:
    key = server.create_key(2)
    finished(server, key, submit(server, key).headers["location"])
    text = requests.get(server.url + "/metrics", timeout=10).text
    for name in (
        "cutout_jobs_queued",
        "cutout_jobs_submitted_total",
        'cutout_jobs_finished_total{status="succeeded"}',
        "cutout_job_duration_seconds_count",
        "cutout_webhook_attempts_total",
        "cutout_webhook_failures_total",
    ):
        assert name in text, name


def test_cli_sends_a_folder_as_a_batch_and_resumes(server: LiveServer, tmp_path: Path) -> None:
    key = server.create_key(10)
    photos, out = tmp_path / "photos", tmp_path / "out"
    photos.mkdir()
    (photos / "one.jpg").write_bytes(TINY)
    (photos / "two.png").write_bytes(subject_image(40, 30, "PNG"))
    (photos / "broken.jpg").write_bytes(b"not an image")
    (photos / "notes.txt").write_text("not a photo: skipped")

    def run() -> subprocess.CompletedProcess[str]:
        args = ("batch", str(photos), "--out", str(out), "--url", server.url, "--key", key, "--model", "ghost")
        return server.cli(*args)

    first = run()
    assert first.returncode == 1 and "broken.jpg: failed invalid_image" in first.stderr, first.stderr
    assert sorted(p.name for p in out.iterdir()) == ["one.png", "two.png"]
    assert png_of((out / "one.png").read_bytes()).mode == "RGBA"
    assert server.balance(key) == 8
    # A rerun sends only what has no cut-out yet (the broken photo, failing again): resumable.
    (photos / "three.jpg").write_bytes(TINY)
    second = run()
    assert second.returncode == 1 and sorted(p.name for p in out.iterdir()) == ["one.png", "three.png", "two.png"]
    assert server.balance(key) == 7


def test_cli_shows_the_webhook_secret_that_the_account_endpoint_shows(server: LiveServer) -> None:
    key = server.create_key(1)
    account = requests.get(server.url + "/v2/account", headers={"ApiKey": key}, timeout=10).json()
    shown = server.cli("keys", "webhook-secret", account["account_id"])
    assert shown.returncode == 0 and shown.stdout.strip() == account["webhook_secret"]
    assert server.cli("keys", "webhook-secret", "acct_nope").returncode != 0
