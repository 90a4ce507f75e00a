"""The fast layer's routing and validation: every documented route answers in process
(tests/inprocess.py: create_app and its lifespan, real weights, httpx's ASGITransport)."""

from __future__ import annotations

import io

import pytest
from PIL import Image
from starlette.routing import Route

from app.openapi import document as openapi
from harness import subject_image
from inprocess import InProcess, check_response

pytestmark = pytest.mark.anyio


def test_importing_main_builds_no_app() -> None:
    """Only create_app() builds one (`python -m app serve`, `uvicorn --factory app.main:create_app`)."""
    import app.main

    assert not hasattr(app.main, "app")


def served_routes(fast_app: InProcess) -> set[tuple[str, str]]:
    return {
        (route.path, method.lower())
        for route in fast_app.app.routes
        if isinstance(route, Route)
        for method in (route.methods or ()) - {"HEAD"}
    }


async def test_every_served_route_is_documented_or_deliberately_not(fast_app: InProcess) -> None:
    documented = {
        (path, method) for path, methods in openapi.operations(fast_app.services.settings).items() for method in methods
    }
    assert not documented & openapi.UNDOCUMENTED
    assert served_routes(fast_app) == documented | openapi.UNDOCUMENTED


async def test_every_served_route_answers(fast_app: InProcess) -> None:
    key = await fast_app.key()
    photo = subject_image(64, 48)
    posts = 0
    for path, method in sorted(served_routes(fast_app)):
        if "/v2/jobs/" in path or "/v2/batches" in path:
            continue  # a job's and a batch's routes: tests/test_jobs.py
        if method == "post":  # the upload routes, both spellings (no redirect)
            posts += 1
            response = await fast_app.client.post(
                path, headers={"ApiKey": key}, files={"image": ("a.jpg", photo, "image/jpeg")}
            )
            assert response.status_code == 200, (path, response.text[:200])
            assert response.headers["content-type"] == "image/png"
            png = Image.open(io.BytesIO(response.content))
            assert png.size == (64, 48) and png.mode == ("L" if "mask" in path else "RGBA"), path
            assert response.headers["x-credits-charged"] == "1" and response.headers["x-model"] == "ghost"
            assert {"x-ratelimit-limit", "x-ratelimit-remaining", "x-ratelimit-reset"} <= set(response.headers)
        else:
            response = await fast_app.client.get(path, headers={"ApiKey": key})
            assert response.status_code == 200, (path, response.text[:200])
        assert response.headers["x-request-id"].startswith("req_")
    account = (await fast_app.client.get("/v2/account", headers={"ApiKey": key})).json()
    assert account["credits"] == 100 - posts and set(account["models"]) == {"ghost", "falcon"}


async def test_the_model_field_picks_the_pipeline(fast_app: InProcess) -> None:
    response = await fast_app.client.post(
        "/v2/rembg/",
        headers={"ApiKey": await fast_app.key()},
        files={"image": ("a.jpg", subject_image(64, 48), "image/jpeg")},
        data={"model": "falcon"},
    )
    assert response.status_code == 200 and response.headers["x-model"] == "falcon"


@pytest.mark.parametrize(
    ("request_kwargs", "code", "named"),
    [
        ({"files": {"photo": ("a.jpg", b"x")}}, "invalid_image", "'photo'"),
        ({"files": {"image": ("a.jpg", b"x")}, "data": {"resolution": "full"}}, "invalid_parameter", "'resolution'"),
        ({"files": [("image", ("a.jpg", b"x")), ("image", ("b.jpg", b"x"))]}, "invalid_parameter", "several 'image'"),
        ({"json": {"image": "aGVsbG8="}}, "invalid_image", "application/json"),
        (
            {"content": b"garbage", "headers": {"Content-Type": "multipart/form-data; boundary=x"}},
            "invalid_parameter",
            '"image"',
        ),
        ({"files": {"image": ("a.jpg", b"")}}, "invalid_image", "empty"),
        (
            {"files": {"image": ("a.jpg", subject_image(32, 24))}, "headers": {"Idempotency-Key": "k" * 256}},
            "invalid_parameter",
            "Idempotency-Key",
        ),
    ],
)
async def test_bad_forms_get_a_400_that_names_the_problem(
    fast_app: InProcess, request_kwargs: dict, code: str, named: str
) -> None:
    key = await fast_app.key()
    kwargs = dict(request_kwargs)
    headers = {"ApiKey": key, **kwargs.pop("headers", {})}
    body = check_response(await fast_app.client.post("/v2/rembg/", headers=headers, **kwargs), code)
    assert named in body["error"]["message"]
    account = await fast_app.services.store.account_by_key(key)
    assert account is not None and account.credits == 100
