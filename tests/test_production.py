"""Running it in production: probes, Prometheus metrics, JSON access logs, graceful shutdown.

Every test talks to a real uvicorn server over HTTP; the shutdown tests send it a real SIGTERM.
"""

from __future__ import annotations

import concurrent.futures
import json
import signal
import threading
import time
from collections.abc import Callable, Iterator

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families
from urllib3 import encode_multipart_formdata

from harness import LiveServer, RedisServer, assert_error, concurrency_env, png_of, subject_image, wait_until


def scrape(server: LiveServer) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """/metrics parsed with prometheus-client's own parser: (sample name, labels) -> value."""
    response = requests.get(server.url + "/metrics", timeout=10)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def metric(samples: dict, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def test_health_and_ready(live_server: LiveServer) -> None:
    health = requests.get(live_server.url + "/health", timeout=10)
    assert health.status_code == 200 and health.json() == {"status": "ok"}
    ready = requests.get(live_server.url + "/ready", timeout=10)
    assert ready.status_code == 200
    assert ready.json() == {"status": "ready", "models": ["ghost", "falcon", "aurora"]}


def test_ready_says_503_while_the_store_is_down(
    start_server: Callable[..., LiveServer], start_redis: Callable[[], RedisServer]
) -> None:
    redis_server = start_redis()
    server = start_server(CUTOUT_REDIS_URL=redis_server.url)
    key = server.create_key(5)
    redis_server.stop()
    ready = requests.get(server.url + "/ready", timeout=10)
    assert ready.status_code == 503 and ready.json() == {"status": "store_unreachable"}
    assert requests.get(server.url + "/health", timeout=10).status_code == 200, "alive, just not ready"
    assert_error(server.remove(key, model="ghost"), 503, "service_unavailable")
    assert metric(scrape(server), "cutout_rejects_total", code="service_unavailable") == 1

    redis_server.start()
    wait_until(lambda: requests.get(server.url + "/ready", timeout=10).status_code == 200, 30, "/ready to recover")


def test_probe_command_is_the_container_healthcheck(live_server: LiveServer) -> None:
    assert live_server.cli("probe", "--port", str(live_server.port)).returncode == 0
    assert live_server.cli("probe", "--port", str(live_server.port), "--path", "/health").returncode == 0
    missing = live_server.cli("probe", "--port", str(live_server.port), "--path", "/nothing")
    assert missing.returncode == 1 and "HTTP 404" in missing.stderr
    nobody = live_server.cli("probe", "--port", "1")
    assert nobody.returncode == 1


def test_metrics_count_requests_inference_credits_and_rejects(live_server: LiveServer) -> None:
    key = live_server.create_key(10)
    before = scrape(live_server)

    assert live_server.remove(key, model="aurora").status_code == 200
    assert live_server.remove(key, model="ghost", path="/v2/rembg/mask/").status_code == 200
    assert_error(live_server.remove("co_wrong"), 401, "invalid_api_key")
    assert_error(live_server.remove(key, b"not an image"), 400, "invalid_image")
    assert_error(requests.get(live_server.url + "/nowhere", timeout=10), 404, "not_found")

    after = scrape(live_server)

    def delta(name: str, **labels: str) -> float:
        return metric(after, name, **labels) - metric(before, name, **labels)

    assert delta("cutout_requests_total", route="/v2/rembg/", status="200", model="aurora") == 1
    assert delta("cutout_requests_total", route="/v2/rembg/mask/", status="200", model="ghost") == 1
    assert delta("cutout_requests_total", route="/v2/rembg/", status="401", model="") == 1
    # The model is only a label once it is known to be valid: unknown names cannot blow up cardinality.
    assert delta("cutout_requests_total", route="/v2/rembg/", status="400", model="falcon") == 1
    assert delta("cutout_requests_total", route="unmatched", status="404", model="") == 1
    assert delta("cutout_request_duration_seconds_count", route="/v2/rembg/", model="aurora") == 1
    assert delta("cutout_inference_duration_seconds_count", model="aurora", output="cutout") == 1
    assert delta("cutout_inference_duration_seconds_count", model="ghost", output="mask") == 1
    assert 0 < delta("cutout_inference_duration_seconds_sum", model="aurora", output="cutout") < 60
    assert delta("cutout_credits_charged_total", model="aurora") == 2
    assert delta("cutout_credits_charged_total", model="ghost") == 1
    assert delta("cutout_rejects_total", code="invalid_api_key") == 1
    assert delta("cutout_rejects_total", code="invalid_image") == 1
    assert delta("cutout_rejects_total", code="not_found") == 1
    assert metric(after, "cutout_queue_depth") == 0
    assert metric(after, "cutout_jobs_in_flight") == 0
    assert metric(after, "cutout_requests_in_flight") == 0, "scrapes and probes are not API requests"


def test_queue_depth_and_busy_rejects_under_load(start_server: Callable[..., LiveServer]) -> None:
    server = start_server(CUTOUT_WORKERS="1", CUTOUT_QUEUE_SIZE="2", **concurrency_env(5))
    key = server.create_key(50, "--rate", "1000/minute")
    image = subject_image(1600, 1200)
    seen_depth = 0.0
    with concurrent.futures.ThreadPoolExecutor(5) as pool:
        futures = [pool.submit(server.remove, key, image, "aurora") for _ in range(5)]
        while not all(f.done() for f in futures):
            seen_depth = max(seen_depth, metric(scrape(server), "cutout_queue_depth"))
            time.sleep(0.05)
    statuses = sorted(f.result().status_code for f in futures)
    samples = scrape(server)
    assert seen_depth >= 1, "requests waited for the single worker"
    assert metric(samples, "cutout_rejects_total", code="server_busy") == statuses.count(503)
    assert metric(samples, "cutout_credits_charged_total", model="aurora") == 2 * statuses.count(200)


def read_access_log(server: LiveServer) -> list[dict]:
    lines = [json.loads(line) for line in server.log().splitlines() if line.startswith("{")]
    return [line for line in lines if line.get("logger") == "cutout.access"]


def test_access_log_is_json_with_ids_and_timings_and_never_the_key(start_server: Callable[..., LiveServer]) -> None:
    server = start_server(CUTOUT_LOG_LEVEL="info")
    key = server.create_key(5)
    ok = server.remove(key, subject_image(160, 120), model="ghost")
    assert ok.status_code == 200
    refused = server.remove(key, model="eagle")
    assert_error(refused, 400, "invalid_parameter")

    wait_until(lambda: len(read_access_log(server)) >= 2, 10, "access log lines")
    every_line = server.log().splitlines()
    assert every_line and all(json.loads(line)["level"] for line in every_line), "every log line is JSON"
    assert key not in server.log()
    account_id = json.loads(server.cli("keys", "list").stdout.splitlines()[-1])["account_id"]

    by_id = {line["request_id"]: line for line in read_access_log(server)}
    success = by_id[ok.headers["X-Request-ID"]]
    assert success["method"] == "POST" and success["route"] == "/v2/rembg/" and success["status"] == 200
    assert success["account_id"] == account_id
    assert success["model"] == "ghost" and success["credits_charged"] == 1
    assert success["bytes_out"] == len(ok.content)
    assert success["bytes_in"] > len(subject_image(160, 120))  # the multipart body around the photo
    assert 0 < success["inference_ms"] <= success["duration_ms"]
    assert success["error_code"] is None

    failure = by_id[refused.headers["X-Request-ID"]]
    assert failure["status"] == 400 and failure["error_code"] == "invalid_parameter"
    assert failure["account_id"] == account_id and failure["credits_charged"] == 0


class SlowUpload:
    """A POST whose body is sent in two halves, the second only when `finish()` is called.

    The request is in flight on the server (headers in, body streaming) for as long as the test wants.
    """

    def __init__(self, server: LiveServer, key: str, model: str = "ghost") -> None:
        body, content_type = encode_multipart_formdata(
            {"image": ("photo.jpg", subject_image(160, 120), "image/jpeg"), "model": model}
        )
        self._release = threading.Event()
        self.response: requests.Response | None = None
        self.error: Exception | None = None

        def chunks() -> Iterator[bytes]:
            yield body[: len(body) // 2]
            self._release.wait(60)
            yield body[len(body) // 2 :]

        def post() -> None:
            try:
                self.response = requests.post(
                    server.url + "/v2/rembg/",
                    data=chunks(),
                    headers={"ApiKey": key, "Content-Type": content_type},
                    timeout=60,
                )
            except Exception as err:  # the test asserts on it
                self.error = err

        self._thread = threading.Thread(target=post, daemon=True)
        self._thread.start()

    def finish(self) -> requests.Response:
        self._release.set()
        self._thread.join(60)
        assert self.error is None, self.error
        assert self.response is not None
        return self.response


def sigterm(server: LiveServer) -> None:
    assert server.process is not None
    server.process.send_signal(signal.SIGTERM)
    # /ready is the first thing to change: load balancers stop sending traffic.
    wait_until(lambda: requests.get(server.url + "/ready", timeout=5).status_code == 503, 10, "/ready to say 503")


def test_sigterm_finishes_in_flight_requests_and_refuses_new_ones_after_the_delay(
    start_server: Callable[..., LiveServer], tmp_path
) -> None:
    # Long enough that the request sent at once after the signal arrives within it on a busy box.
    delay_s = 6.0
    server = start_server(data_dir=tmp_path / "drain", CUTOUT_DRAIN_DELAY_S=str(delay_s))
    key = server.create_key(10)
    # Another client's key: the slow upload holds its own account's one slot from its body on (issue 21).
    other = server.create_key(10)
    upload = SlowUpload(server, key)
    wait_until(lambda: metric(scrape(server), "cutout_requests_in_flight") == 1, 30, "the upload to be in flight")

    signalled = time.monotonic()
    sigterm(server)
    # The delay: the load balancer has not seen /ready yet, so what it still sends is served.
    during_delay = server.remove(other, model="ghost")
    assert during_delay.status_code == 200, during_delay.text
    # ... and closed after its answer: a keep-alive client reconnects, through the balancer, elsewhere.
    assert during_delay.headers["Connection"] == "close"
    ready = requests.get(server.url + "/ready", timeout=5)
    assert ready.json() == {"status": "shutting_down"} and ready.headers["Retry-After"] == "1"
    assert requests.get(server.url + "/health", timeout=5).status_code == 200
    time.sleep(max(0.0, signalled + delay_s + 0.2 - time.monotonic()))
    refused = server.remove(other, model="ghost")
    assert_error(refused, 503, "shutting_down")
    assert refused.headers["Connection"] == "close" and refused.headers["Retry-After"] == "1"

    finished = upload.finish()
    assert finished.status_code == 200, finished.text
    assert png_of(finished.content).size == (160, 120)
    assert finished.headers["X-Credits-Charged"] == "1"

    assert server.process is not None
    assert server.process.wait(timeout=30) == 0, server.log()
    server.start()
    charged = (server.balance(key), server.balance(other))
    assert charged == (9, 9), "the upload and the request during the delay were charged, nothing else"


def test_sigterm_cancels_and_refunds_what_outlives_the_drain(start_server: Callable[..., LiveServer], tmp_path) -> None:
    server = start_server(data_dir=tmp_path / "cutoff", CUTOUT_SHUTDOWN_TIMEOUT_S="0.1", CUTOUT_WORKERS="1")
    key = server.create_key(10)
    # A 12 MP aurora cut-out takes seconds: it is still in the worker when the drain runs out.
    results: list[requests.Response] = []
    big = threading.Thread(
        target=lambda: results.append(server.remove(key, subject_image(4000, 3000), model="aurora")), daemon=True
    )
    big.start()
    wait_until(lambda: metric(scrape(server), "cutout_jobs_in_flight") == 1, 60, "the job to reach the worker")

    sigterm(server)
    big.join(60)
    assert_error(results[0], 503, "shutting_down")
    assert "nothing was charged" in results[0].json()["error"]["message"]

    assert server.process is not None
    assert server.process.wait(timeout=60) == 0, server.log()
    server.start()
    assert server.balance(key) == 10, "the cancelled request was refunded"


@pytest.mark.slow  # starts the service as a process
def test_a_failed_start_exits_with_a_failure_status(tmp_path) -> None:
    # Docker restart policies and supervisors read the exit status, not the log.
    server = LiveServer(tmp_path / "data", {"CUTOUT_MODELS_DIR": str(tmp_path / "no-weights")})
    with pytest.raises(RuntimeError):
        server.start()
    assert server.process is not None and server.process.returncode == 3
