"""Prometheus metrics (prometheus-client), served at GET /metrics.

One process answers every request (inference runs on threads inside it), so
the default registry is the whole picture and no multiprocess mode is needed.
Label values are bounded: routes are route templates ("unmatched" for 404s),
models only names the registry knows, codes only our error codes.
"""

from __future__ import annotations

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from starlette.requests import Request
from starlette.responses import Response

from app.http.shutdown import Drain
from app.http.unsent import UNSENT
from app.inference.gate import WorkerGate

# Seconds: from a cached 404 up to a big image queued behind others.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)

REQUESTS = Counter("cutout_requests_total", "HTTP requests answered.", ["route", "status", "model"])
REQUEST_SECONDS = Histogram(
    "cutout_request_duration_seconds",
    "Time from the request's arrival to its last response byte.",
    ["route", "model"],
    buckets=LATENCY_BUCKETS,
)
INFERENCE_SECONDS = Histogram(
    "cutout_inference_duration_seconds",
    "Worker time of one job: decode, model, post-processing, PNG encode (queue wait excluded).",
    ["model", "output"],
    buckets=LATENCY_BUCKETS,
)
REQUESTS_IN_FLIGHT = Gauge(
    "cutout_requests_in_flight",
    "API requests being handled (probes and scrapes excluded), and answers written but not yet read by their clients.",
)
UNSENT_BYTES = Gauge(
    "cutout_unsent_answer_bytes",
    "Bytes of answers written but not yet read by their clients (closed after send_timeout_s without a read).",
)
QUEUE_DEPTH = Gauge("cutout_queue_depth", "Jobs admitted to the worker gate and waiting for a worker.")
JOBS_IN_FLIGHT = Gauge("cutout_jobs_in_flight", "Jobs admitted to the worker gate (running or waiting).")
CREDITS_CHARGED = Counter("cutout_credits_charged_total", "Credits committed for delivered results.", ["model"])
REJECTS = Counter("cutout_rejects_total", "Error responses, by error code.", ["code"])
JOBS_QUEUED = Gauge("cutout_jobs_queued", "Asynchronous jobs waiting to run (all replicas), as last counted.")
JOBS_SUBMITTED = Counter("cutout_jobs_submitted_total", "Asynchronous jobs submitted (batch items included).")
JOBS_FINISHED = Counter("cutout_jobs_finished_total", "Asynchronous jobs ended, by final status.", ["status"])
JOB_SECONDS = Histogram(
    "cutout_job_duration_seconds",
    "Time from an asynchronous job's submission to its result being stored.",
    buckets=(*LATENCY_BUCKETS, 300.0, 900.0, 3600.0),
)
WEBHOOK_ATTEMPTS = Counter("cutout_webhook_attempts_total", "Webhook delivery attempts, by outcome.", ["outcome"])
WEBHOOK_FAILURES = Counter("cutout_webhook_failures_total", "Webhooks given up after webhook_retry_s.")


def watch(gate: WorkerGate, drain: Drain) -> None:
    """Read the gauges from their owners at scrape time, so they cost nothing per request."""
    REQUESTS_IN_FLIGHT.set_function(lambda: drain.in_flight + UNSENT.connections)
    UNSENT_BYTES.set_function(lambda: UNSENT.bytes)
    JOBS_IN_FLIGHT.set_function(lambda: gate.in_flight)
    QUEUE_DEPTH.set_function(lambda: max(0, gate.in_flight - gate.workers))


def observe_request(route: str, status: int, model: str, seconds: float, error_code: str | None) -> None:
    REQUESTS.labels(route, str(status), model).inc()
    REQUEST_SECONDS.labels(route, model).observe(seconds)
    if error_code:
        REJECTS.labels(error_code).inc()


def observe_delivery(model: str, output: str, inference_s: float, credits: int) -> None:
    INFERENCE_SECONDS.labels(model, output).observe(inference_s)
    CREDITS_CHARGED.labels(model).inc(credits)


async def metrics(request: Request) -> Response:
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
