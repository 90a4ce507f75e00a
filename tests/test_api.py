"""The HTTP contract of /v2/rembg and /v2/rembg/mask, end to end through uvicorn."""

from __future__ import annotations

import concurrent.futures
import json

import numpy as np
import pytest
import requests

from harness import LiveServer, assert_error, concurrency_env, png_of, subject_image

MODELS = ["ghost", "falcon", "aurora"]
COSTS = {"ghost": 1, "falcon": 1, "aurora": 2}


@pytest.mark.parametrize("model", MODELS)
def test_cutout_is_rgba_png_of_input_size_and_charges_model_cost(
    live_server: LiveServer, api_key: str, model: str
) -> None:
    image = subject_image(160, 120)
    response = live_server.remove(api_key, image, model=model)

    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "image/png"
    assert response.headers["X-Request-ID"].startswith("req_")
    assert response.headers["X-Credits-Charged"] == str(COSTS[model])
    assert response.headers["X-Credits-Remaining"] == str(100 - COSTS[model])
    cutout = png_of(response.content)
    assert cutout.mode == "RGBA" and cutout.size == (160, 120)
    alpha = np.asarray(cutout.getchannel("A"))
    assert alpha[60, 80] > 200, "the disc in the middle is the subject"
    assert alpha[3, 3] < 40 and alpha[-3, -3] < 40, "the corners are background"
    assert live_server.balance(api_key) == 100 - COSTS[model]


def test_default_model_is_falcon(live_server: LiveServer, api_key: str) -> None:
    response = live_server.remove(api_key)
    assert response.status_code == 200
    assert response.headers["X-Model"] == "falcon"


def test_mask_is_single_channel_white_subject(live_server: LiveServer, api_key: str) -> None:
    response = live_server.remove(api_key, subject_image(150, 100), model="ghost", path="/v2/rembg/mask/")
    assert response.status_code == 200, response.text
    mask = png_of(response.content)
    assert mask.mode == "L" and mask.size == (150, 100)
    pixels = np.asarray(mask)
    assert pixels[50, 75] > 200 and pixels[2, 2] < 40
    assert response.headers["X-Credits-Charged"] == "1"


@pytest.mark.parametrize("path", ["/v2/rembg", "/v2/rembg/mask"])
def test_paths_without_trailing_slash_answer_directly(live_server: LiveServer, api_key: str, path: str) -> None:
    response = live_server.remove(api_key, model="ghost", path=path, allow_redirects=False)
    assert response.status_code == 200
    assert response.headers["content-type"] == "image/png"


def test_missing_api_key(live_server: LiveServer) -> None:
    assert_error(live_server.remove(None), 401, "invalid_api_key")


@pytest.mark.parametrize("header", ["X-Api-Key", "Authorization: Bearer", "Authorization: bearer"])
def test_key_in_x_api_key_or_bearer_is_accepted_and_charged(live_server: LiveServer, api_key: str, header: str) -> None:
    name, _, scheme = header.partition(": ")
    value = f"{scheme} {api_key}" if scheme else api_key
    response = live_server.remove(None, model="ghost", headers={name: value})
    assert response.status_code == 200, response.text
    assert response.headers["X-Credits-Remaining"] == "99"
    account = requests.get(live_server.url + "/v2/account", headers={name: value}, timeout=10)
    assert account.status_code == 200 and account.json()["credits"] == 99


@pytest.mark.parametrize(
    "headers",
    [{"Authorization": "Basic dXNlcjpwYXNz"}, {"Authorization": "Bearer"}, {"X-Api-Key": ""}],
    ids=["basic", "bearer-without-key", "empty"],
)
def test_other_authorization_forms_are_a_missing_key(live_server: LiveServer, headers: dict[str, str]) -> None:
    body = assert_error(live_server.remove(None, headers=headers), 401, "invalid_api_key")
    assert "X-Api-Key" in body["error"]["message"] and "Bearer" in body["error"]["message"]


def test_wrong_bearer_key_is_refused(live_server: LiveServer) -> None:
    assert_error(
        live_server.remove(None, headers={"Authorization": "Bearer co_not-a-real-key"}), 401, "invalid_api_key"
    )


def test_unknown_api_key(live_server: LiveServer) -> None:
    assert_error(live_server.remove("co_not-a-real-key"), 401, "invalid_api_key")


def test_revoked_key_is_refused(live_server: LiveServer) -> None:
    key = live_server.create_key(5)
    account_id = json.loads(live_server.cli("keys", "list").stdout.strip().splitlines()[-1])["account_id"]
    assert live_server.cli("keys", "revoke", account_id).returncode == 0
    assert_error(live_server.remove(key), 401, "invalid_api_key")


def test_not_an_image_is_refused_and_not_charged(live_server: LiveServer, api_key: str) -> None:
    body = assert_error(live_server.remove(api_key, b"hello, I am text renamed .jpg"), 400, "invalid_image")
    assert "image" in body["error"]["message"].lower()
    assert live_server.balance(api_key) == 100


def test_truncated_image_is_refused_and_refunded(live_server: LiveServer, api_key: str) -> None:
    whole = subject_image(400, 300)
    assert_error(live_server.remove(api_key, whole[: len(whole) // 3]), 400, "invalid_image")
    assert live_server.balance(api_key) == 100


def test_missing_image_part(live_server: LiveServer, api_key: str) -> None:
    response = requests.post(
        live_server.url + "/v2/rembg/",
        headers={"ApiKey": api_key},
        files={"photo": ("a.jpg", subject_image(), "image/jpeg")},
        timeout=30,
    )
    body = assert_error(response, 400, "invalid_image")
    assert '"image"' in body["error"]["message"]
    response = requests.post(
        live_server.url + "/v2/rembg/", headers={"ApiKey": api_key}, data={"model": "ghost"}, timeout=30
    )
    assert_error(response, 400, "invalid_image")


def test_unknown_model(live_server: LiveServer, api_key: str) -> None:
    body = assert_error(live_server.remove(api_key, model="eagle"), 400, "invalid_parameter")
    assert "falcon" in body["error"]["message"]
    assert live_server.balance(api_key) == 100


def test_insufficient_credits_costs_nothing(live_server: LiveServer) -> None:
    key = live_server.create_key(1)
    assert_error(live_server.remove(key, model="aurora"), 402, "insufficient_credits")
    assert live_server.balance(key) == 1
    assert live_server.remove(key, model="ghost").status_code == 200
    assert_error(live_server.remove(key, model="ghost"), 402, "insufficient_credits")
    assert live_server.balance(key) == 0


def test_unknown_route_and_method(live_server: LiveServer) -> None:
    assert_error(requests.get(live_server.url + "/v1/nothing", timeout=10), 404, "not_found")
    assert_error(requests.get(live_server.url + "/v2/rembg/", timeout=10), 405, "method_not_allowed")


def test_rate_limit_429_with_retry_after(live_server: LiveServer) -> None:
    key = live_server.create_key(10, "--rate", "2/minute")
    for _ in range(2):
        assert live_server.remove(key, model="ghost").status_code == 200
    response = live_server.remove(key, model="ghost")
    body = assert_error(response, 429, "rate_limit_exceeded")
    assert isinstance(body["retry_after"], int) and 1 <= body["retry_after"] <= 60
    assert int(response.headers["Retry-After"]) == body["retry_after"]
    assert live_server.balance(key) == 8


def test_oversize_body_is_413(start_server) -> None:
    server = start_server(CUTOUT_MAX_BODY_BYTES="20000")
    key = server.create_key(5)
    assert_error(server.remove(key, subject_image(900, 700, quality=100)), 413, "payload_too_large")
    assert server.balance(key) == 5


def test_full_queue_answers_503_at_once_and_charges_only_successes(start_server) -> None:
    server = start_server(CUTOUT_WORKERS="1", CUTOUT_QUEUE_SIZE="0", **concurrency_env(6))
    key = server.create_key(50, "--rate", "1000/minute")
    image = subject_image(1200, 900)
    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        responses = list(pool.map(lambda _: server.remove(key, image, model="aurora"), range(6)))
    statuses = [r.status_code for r in responses]
    assert set(statuses) <= {200, 503} and 503 in statuses and 200 in statuses, statuses
    for r in responses:
        if r.status_code == 503:
            assert_error(r, 503, "server_busy")
            assert int(r.headers["Retry-After"]) >= 1
    assert server.balance(key) == 50 - 2 * statuses.count(200)


def test_credits_survive_a_restart(start_server, tmp_path) -> None:
    server = start_server(data_dir=tmp_path / "persist")
    key = server.create_key(7)
    assert server.remove(key, model="ghost").status_code == 200
    server.stop()
    server.start()
    assert server.balance(key) == 6
