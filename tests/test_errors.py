"""Every error code in app.errors.ERROR_CODES, answered by the app in process (the fast layer).

Each code has one scenario below that makes the service answer it, registered with
`@answers(code)`; `test_every_code_has_a_scenario` fails when a code is added to the
table without one (or a scenario names a code the table lacks). A code raised that
the table lacks fails in ApiError's constructor, and the source scan below finds it
before it is ever raised.
"""

from __future__ import annotations

import ast
import io
import threading
from collections.abc import AsyncIterator, Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, TypeVar

import anyio
import httpx
import pytest
from PIL import Image

from app.accounts import idempotency
from app.errors import ERROR_CODES, ApiError
from app.http.errors import _HTTP_CODES
from app.main import create_app
from app.openapi import document as openapi
from harness import free_port, subject_image
from inprocess import (
    MAX_BODY_BYTES,
    MAX_SIDE,
    InProcess,
    check_error,
    check_response,
    client_for,
    fast_settings,
    running,
)

pytestmark = pytest.mark.anyio

ROOT = Path(__file__).resolve().parent.parent
SCENARIOS: set[str] = set()
F = TypeVar("F", bound=Callable[..., Any])


def answers(code: str) -> Callable[[F], F]:
    SCENARIOS.add(code)
    return lambda test: test


@pytest.fixture
async def app(fast_app: InProcess) -> InProcess:
    return fast_app


def form(image: bytes | None = None, model: str | None = None) -> dict[str, Any]:
    files = {"image": ("photo.jpg", image if image is not None else subject_image(), "image/jpeg")}
    return {"files": files, "data": {"model": model} if model is not None else {}}


# --- the table itself ---


def test_every_code_has_a_scenario() -> None:
    assert set(ERROR_CODES) == SCENARIOS


def test_api_error_refuses_a_code_the_table_lacks() -> None:
    with pytest.raises(ValueError, match="ERROR_CODES"):
        ApiError("teapot", "I am a teapot.")


def test_every_code_raised_in_the_source_is_in_the_table() -> None:
    """ApiError is only ever built with a literal code (so this scan sees every one), and each is in the table."""
    raised: set[str] = set(_HTTP_CODES.values())
    for path in sorted((ROOT / "app").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "ApiError":
                first = node.args[0] if node.args else None
                where = f"{path.relative_to(ROOT)}:{node.lineno}"
                if isinstance(first, ast.Constant) and isinstance(first.value, str):
                    raised.add(first.value)
                elif path.name != "errors.py":  # errors.py maps Starlette's statuses through _HTTP_CODES
                    pytest.fail(f"{where}: ApiError's code must be a string literal")
    assert raised - set(ERROR_CODES) == set()
    assert set(ERROR_CODES) - raised == set(), "codes in the table that nothing raises"


# --- one scenario per code ---


@answers("invalid_image")
async def test_invalid_image(app: InProcess) -> None:
    key = await app.key()
    response = await app.client.post("/v2/rembg/", headers={"ApiKey": key}, **form(b"not an image"))
    check_response(response, "invalid_image")
    assert await app.services.store.account_by_key(key) is not None


@answers("invalid_parameter")
async def test_invalid_parameter(app: InProcess) -> None:
    response = await app.client.post("/v2/rembg/", headers={"ApiKey": await app.key()}, **form(model="nope"))
    body = check_response(response, "invalid_parameter")
    assert "'nope'" in body["error"]["message"] and "ghost, falcon" in body["error"]["message"]


@answers("invalid_api_key")
async def test_invalid_api_key(app: InProcess) -> None:
    check_response(await app.client.post("/v2/rembg/", **form()), "invalid_api_key")
    check_response(await app.client.get("/v2/account", headers={"ApiKey": "co_wrong"}), "invalid_api_key")


@answers("insufficient_credits")
async def test_insufficient_credits(app: InProcess) -> None:
    response = await app.client.post("/v2/rembg/", headers={"ApiKey": await app.key(credits=0)}, **form())
    body = check_response(response, "insufficient_credits")
    assert "costs 1 credits and the account has 0" in body["error"]["message"]


@answers("not_found")
async def test_not_found(app: InProcess) -> None:
    check_response(await app.client.get("/v1/removebg"), "not_found")


@answers("method_not_allowed")
async def test_method_not_allowed(app: InProcess) -> None:
    response = await app.client.get("/v2/rembg/")
    check_response(response, "method_not_allowed")
    assert response.headers["allow"] == "POST"


@answers("request_timeout")
async def test_request_timeout(app: InProcess) -> None:
    async def stalling_body() -> AsyncIterator[bytes]:
        yield b'--b\r\nContent-Disposition: form-data; name="image"; filename="a.jpg"\r\n\r\n'
        await anyio.sleep(5)  # far longer than BODY_TIMEOUT_S
        yield b"never sent"

    headers = {"ApiKey": await app.key(), "Content-Type": "multipart/form-data; boundary=b"}
    with anyio.fail_after(3):
        response = await app.client.post("/v2/rembg/", headers=headers, content=stalling_body())
    body = check_response(response, "request_timeout")
    assert "stalled" in body["error"]["message"]


@answers("idempotency_key_in_use")
async def test_idempotency_key_in_use(app: InProcess) -> None:
    key, image = await app.key(), subject_image()
    account = await app.services.store.account_by_key(key)
    assert account is not None
    # The same request, already reserved and still running.
    claim = idempotency.claim(account.id, "retry-1", 3600, output="cutout", model="ghost", image=image)
    await app.services.store.reserve(account.id, 1, "req_first", claim)
    headers = {"ApiKey": key, "Idempotency-Key": "retry-1"}
    response = await app.client.post("/v2/rembg/", headers=headers, **form(image, "ghost"))
    check_response(response, "idempotency_key_in_use")


@answers("idempotency_key_reused")
async def test_idempotency_key_reused(app: InProcess) -> None:
    key = await app.key()
    account = await app.services.store.account_by_key(key)
    assert account is not None
    other = subject_image(width=100)
    claim = idempotency.claim(account.id, "retry-2", 3600, output="cutout", model="ghost", image=other)
    await app.services.store.reserve(account.id, 1, "req_other", claim)
    headers = {"ApiKey": key, "Idempotency-Key": "retry-2"}
    response = await app.client.post("/v2/rembg/", headers=headers, **form(subject_image(), "ghost"))
    check_response(response, "idempotency_key_reused")


@answers("webhook_url_forbidden")
async def test_webhook_url_forbidden(app: InProcess) -> None:
    """The webhook target passes image_url's address guard (no fetch_allow here: loopback is refused)."""
    fields = {"model": "ghost", "webhook_url": "http://127.0.0.1:8080/hook"}
    response = await app.client.post(
        "/v2/rembg/", headers={"ApiKey": await app.key()}, files=form()["files"], data=fields
    )
    body = check_response(response, "webhook_url_forbidden")
    assert "127.0.0.1" in body["error"]["message"]


@answers("too_many_items")
async def test_too_many_items(app: InProcess) -> None:
    response = await app.client.post("/v2/batches", headers={"ApiKey": await app.key()}, json={"items": []})
    check_response(response, "too_many_items")


@answers("job_not_found")
async def test_job_not_found(app: InProcess) -> None:
    headers = {"ApiKey": await app.key()}
    check_response(await app.client.get("/v2/jobs/job_unknown", headers=headers), "job_not_found")
    check_response(await app.client.get("/v2/batches/batch_unknown", headers=headers), "job_not_found")


async def _failed_item(app: InProcess) -> tuple[dict[str, str], str]:
    """A batch whose only item is not an image: it fails at submission, alone."""
    headers = {"ApiKey": await app.key()}
    response = await app.client.post("/v2/batches", headers=headers, json={"items": [{"image_data_uri": "nope"}]})
    assert response.status_code == 202, response.text
    return headers, response.json()["items"][0]["url"]


@answers("job_not_cancellable")
async def test_job_not_cancellable(app: InProcess) -> None:
    headers, location = await _failed_item(app)
    check_response(await app.client.delete(location, headers=headers), "job_not_cancellable")


@answers("result_not_ready")
async def test_result_not_ready(app: InProcess) -> None:
    headers, location = await _failed_item(app)
    body = check_response(await app.client.get(location + "/result", headers=headers), "result_not_ready")
    assert "failed" in body["error"]["message"]


@answers("payload_too_large")
async def test_payload_too_large(app: InProcess) -> None:
    headers = {"ApiKey": await app.key(), "Content-Type": "multipart/form-data; boundary=b"}
    response = await app.client.post("/v2/rembg/", headers=headers, content=b"x" * (MAX_BODY_BYTES + 1))
    check_response(response, "payload_too_large")
    assert response.headers["connection"] == "close"


@answers("image_too_large")
async def test_image_too_large(app: InProcess) -> None:
    buf = io.BytesIO()
    Image.new("L", (MAX_SIDE + 1, 1)).save(buf, "PNG")
    response = await app.client.post("/v2/rembg/", headers={"ApiKey": await app.key()}, **form(buf.getvalue()))
    check_response(response, "image_too_large")


@answers("request_head_too_large")
async def test_request_head_too_large(app: InProcess) -> None:
    """Over max_headers (100). A head over max_head_bytes gets the same code from the server's protocol
    (app/http/server.py), which only a socket reaches: tests/test_connections.py."""
    headers = {f"X-Filler-{i}": "x" for i in range(150)}
    response = await app.client.get("/health", headers=headers)
    check_response(response, "request_head_too_large")
    assert response.headers["connection"] == "close"


@answers("rate_limit_exceeded")
async def test_rate_limit_exceeded(app: InProcess) -> None:
    key = await app.key(rate_limit="1/minute")
    check_response(await app.client.post("/v2/rembg/", headers={"ApiKey": key}), "invalid_image")
    response = await app.client.post("/v2/rembg/", headers={"ApiKey": key})
    body = check_response(response, "rate_limit_exceeded")
    assert body["retry_after"] == int(response.headers["retry-after"])
    assert response.headers["x-ratelimit-limit"] == "1"


@answers("client_closed_request")
async def test_client_closed_request(app: InProcess) -> None:
    """The client hangs up mid-upload: raw ASGI, since an HTTP client cannot read the answer it left."""
    key = await app.key()
    incoming = [
        {"type": "http.request", "body": b'--b\r\nContent-Disposition: form-data; name="image"', "more_body": True},
        {"type": "http.disconnect"},
    ]
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return incoming.pop(0) if incoming else {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/v2/rembg/",
        "raw_path": b"/v2/rembg/",
        "query_string": b"",
        "root_path": "",
        "headers": [(b"apikey", key.encode()), (b"content-type", b"multipart/form-data; boundary=b")],
        "client": ("203.0.113.7", 50000),
        "server": ("cutout.test", 80),
    }
    await app.app(scope, receive, send)
    start, body = sent[0], b"".join(m.get("body", b"") for m in sent[1:])
    check_error(
        start["status"],
        httpx.Headers([(k.decode(), v.decode()) for k, v in start["headers"]]),
        body,
        "client_closed_request",
    )


@answers("internal_error")
async def test_internal_error(tmp_path: Path) -> None:
    """A bug: an app whose lifespan never ran has no services, so an authenticated route fails."""
    async with client_for(create_app(fast_settings(tmp_path))) as client:
        response = await client.get("/v2/account", headers={"ApiKey": "co_any"})
    body = check_response(response, "internal_error")
    assert "AttributeError" not in response.text and body["error"]["message"].startswith("Internal error")


@answers("processing_timeout")
async def test_processing_timeout(tmp_path: Path) -> None:
    """One worker, 50 ms to process: a 0.75 MP photo times out (ghost takes ~100 ms), and its job is
    stopped rather than left holding the worker for nobody."""
    settings = fast_settings(tmp_path, workers=1, queue_size=0, processing_timeout_s=0.05)
    async with running(settings) as tight:
        key = await tight.key()
        photo = subject_image(1000, 750)
        check_response(
            await tight.client.post("/v2/rembg/", headers={"ApiKey": key}, **form(photo)), "processing_timeout"
        )
        with anyio.fail_after(5):
            while tight.services.gate.in_flight:
                await anyio.sleep(0.01)
        account = await tight.services.store.account_by_key(key)
        assert account is not None and account.credits == 100  # not charged


@answers("server_busy")
@answers("concurrency_limit_exceeded")
async def test_server_busy_and_concurrency_limit(tmp_path: Path) -> None:
    """One worker, no queue. While one account's 2 MP job holds the worker (for far longer than the two
    in-process requests below take), that account's next request is over its plan's max_concurrent (1)
    with no place to wait (max_queued 0 here), and another account's finds no place."""
    settings = fast_settings(tmp_path, workers=1, queue_size=0)
    no_line = {name: plan.model_copy(update={"max_queued": 0}) for name, plan in settings.plans.items()}
    async with running(settings.model_copy(update={"plans": no_line})) as tight:
        greedy, other = await tight.key(), await tight.key()
        answered: dict[str, httpx.Response] = {}

        async def big_job() -> None:
            photo = subject_image(1600, 1200)
            answered["big"] = await tight.client.post("/v2/rembg/", headers={"ApiKey": greedy}, **form(photo))

        async with anyio.create_task_group() as tasks:
            tasks.start_soon(big_job)
            with anyio.fail_after(30):
                while not tight.services.gate.in_flight:
                    await anyio.sleep(0.005)
            over = await tight.client.post("/v2/rembg/", headers={"ApiKey": greedy}, **form())
            busy = await tight.client.post("/v2/rembg/", headers={"ApiKey": other}, **form())
        assert answered["big"].status_code == 200
        body = check_response(over, "concurrency_limit_exceeded")
        assert body["retry_after"] == int(over.headers["retry-after"])
        check_response(busy, "server_busy")


@answers("image_url_forbidden")
async def test_image_url_forbidden(app: InProcess) -> None:
    # Refused on the address alone (nothing is sent): loopback is not in the default fetch_allow.
    response = await app.client.post(
        "/v2/rembg/", headers={"ApiKey": await app.key()}, json={"image_url": "http://127.0.0.1:9/a.jpg"}
    )
    body = check_response(response, "image_url_forbidden")
    assert "127.0.0.1" in body["error"]["message"]


@answers("image_url_unreachable")
@answers("image_url_too_large")
async def test_image_url_unreachable_and_too_large(tmp_path: Path) -> None:
    """A loopback server allowlisted: a port nobody listens on, and a body over max_body_bytes."""

    class Big(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def do_GET(self) -> None:  # noqa: N802 - http.server's naming
            self.send_response(200)
            self.send_header("Content-Length", str(MAX_BODY_BYTES + 1))
            self.end_headers()
            self.wfile.write(b"\0" * (MAX_BODY_BYTES + 1))

    server = ThreadingHTTPServer(("127.0.0.1", 0), Big)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    settings = fast_settings(tmp_path, fetch_allow=["127.0.0.1/32"], max_body_bytes=MAX_BODY_BYTES)
    try:
        async with running(settings) as fetching:
            key = await fetching.key()
            closed = f"http://127.0.0.1:{free_port()}/a.jpg"
            response = await fetching.client.post("/v2/rembg/", headers={"ApiKey": key}, json={"image_url": closed})
            check_response(response, "image_url_unreachable")
            big = f"http://127.0.0.1:{server.server_address[1]}/big.jpg"
            response = await fetching.client.post("/v2/rembg/", headers={"ApiKey": key}, json={"image_url": big})
            check_response(response, "image_url_too_large")
    finally:
        server.shutdown()
        server.server_close()


@answers("service_unavailable")
async def test_service_unavailable(tmp_path: Path) -> None:
    """The configured Redis does not answer (nothing listens on port 1): fail closed, before any model runs
    (so this app loads none)."""
    async with running(fast_settings(tmp_path, redis_url="redis://127.0.0.1:1/0", models=())) as down:
        check_response(
            await down.client.post("/v2/rembg/", headers={"ApiKey": "co_any"}, **form()), "service_unavailable"
        )


@answers("shutting_down")
async def test_shutting_down(tmp_path: Path) -> None:
    app = create_app(fast_settings(tmp_path))
    app.state.drain.begin(0, 60)  # no delay: refusing at once
    async with client_for(app) as client:
        response = await client.post("/v2/rembg/", headers={"ApiKey": "co_any"}, **form())
    check_response(response, "shutting_down")
    assert response.headers["connection"] == "close"


def test_openapi_documents_every_code() -> None:
    """/openapi.json carries the whole table in its description, and each route's error
    responses enumerate the codes of their status, from the same table."""
    document = openapi.build(fast_settings(ROOT / "data"))
    for code, spec in ERROR_CODES.items():
        assert (f"`{code}`" in document["info"]["description"]) == spec.public, code
    responses = document["paths"]["/v2/rembg/"]["post"]["responses"]
    for status, response in responses.items():
        if status not in ("200", "202"):  # 202: the asynchronous job (app/jobs/)
            # One Error schema by reference; the status's codes are listed in its description.
            assert response["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/Error"}
            codes = [c for c, s in ERROR_CODES.items() if s.status == int(status) and s.public]
            listed = [c for c in ERROR_CODES if f"`{c}`" in response["description"]]
            assert listed == codes
            assert ("Retry-After" in response["headers"]) == any(ERROR_CODES[c].retry_after for c in codes)
