"""POST /v2/rembg/ (cut-out PNG) and POST /v2/rembg/mask/ (mask PNG)."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import anyio
from starlette.requests import Request
from starlette.responses import Response

from app.accounts import idempotency
from app.accounts.auth import authenticate
from app.accounts.billing import charge
from app.errors import (
    ApiError,
    client_closed_request,
    invalid_parameter,
    processing_timeout,
)
from app.http import context, metrics
from app.http.context import request_id_of
from app.imaging import codec
from app.inference.gate import Busy, Expired
from app.inference.pipeline import Output, Pipeline
from app.removal import submission
from app.removal.job import prepare
from app.services import services
from app.store import Account

T = TypeVar("T")


def _operating_resolution(pipeline: Pipeline, value: str | None) -> str:
    """The resolution asked for (default: the model's own), or a 400 naming those the model accepts."""
    if value is None:
        return pipeline.resolutions[0]
    if value.strip().lower() in pipeline.resolutions:
        return value.strip().lower()
    accepted = ", ".join(pipeline.resolutions)
    raise invalid_parameter(
        f"Model {pipeline.name!r} cannot run at operating_resolution {value[:40]!r}; it accepts: {accepted}."
    )


async def _until_disconnected(request: Request) -> None:
    # The body has been read: the next message uvicorn delivers is the disconnect.
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def _unless_client_leaves(request: Request, work: Callable[[], Awaitable[T]]) -> T:
    """`work`'s result, or 499 as soon as the client hangs up: `work` is then cancelled, so a
    queued job is dropped and a running one stopped (WorkerGate.run) instead of done for nobody."""
    job = asyncio.ensure_future(work())
    watcher = asyncio.ensure_future(_until_disconnected(request))
    try:
        await asyncio.wait({job, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (job, watcher):
            task.cancel()
    if job.done() and not job.cancelled():
        return job.result()
    with contextlib.suppress(asyncio.CancelledError):
        await job  # let the gate drop or stop the job before the refund
    raise client_closed_request()


async def _remove(request: Request, output: Output) -> Response:
    svc = services(request)
    account = await authenticate(request, svc.store, svc.limits)
    rate = await svc.limits.hit(account)
    # A place in the account's line for the whole request: past its plan's running and waiting places, 429.
    with rate.on_errors(), svc.slots.admit(account):
        response = await _process(request, account, output)
    response.headers.update(rate.headers())
    return response


async def _process(request: Request, account: Account, output: Output) -> Response:
    svc = services(request)
    sub = await submission.read(request)
    model_name = svc.settings.default_model if sub.model is None else sub.model
    pipeline = svc.registry.get(model_name)
    if pipeline is None:
        names = ", ".join(svc.registry.names)
        raise invalid_parameter(f"Unknown model {model_name[:40]!r}. Choose one of: {names}.")
    logged = context.of_scope(request.scope)  # what the access log line says
    logged.model = model_name
    # Options, the image_url fetch and the background's header check: refused before anything is reserved.
    resolution = _operating_resolution(pipeline, sub.operating_resolution)
    # A fetch holds one of the account's running slots (waiting its turn), so slow URLs cannot pile up fetches.
    turn = functools.partial(svc.slots.hold, account, svc.settings.processing_timeout_s)
    try:
        answer = await _unless_client_leaves(request, lambda: prepare(request, svc.settings, sub, output, turn))
    except TimeoutError:  # the account's turn to fetch did not come in time
        raise processing_timeout() from None
    data = answer.image
    # Off the event loop: work proportional to the upload (header walks, hashing) must not stall other clients.
    probe = functools.partial(codec.probe, data, max_pixels=svc.settings.max_pixels, max_side=svc.settings.max_side)
    info = await anyio.to_thread.run_sync(probe)
    # Admission by memory: the job's estimated peak, from its pixels and the model's measured cost,
    # plus what its options add (a background image's decode).
    memory_bytes = pipeline.spec.peak_bytes(info.width * info.height) + answer.memory_bytes

    render_body = answer.renderer(pipeline, output, resolution)

    def render() -> tuple[object, float]:
        # Timed in the worker, so the inference metric leaves out the queue wait.
        started = time.perf_counter()
        return render_body(data), time.perf_counter() - started

    price = pipeline.price(resolution)
    cost = (price.mask_cost if output == "mask" else price.cost) + answer.extra_cost
    # Another resolution is another request; the default keeps the fingerprint it always had.
    asked = model_name if resolution == pipeline.resolutions[0] else f"{model_name}@{resolution}"
    claim = await idempotency.claim_for(
        request,
        account,
        svc.settings.idempotency_window_s,
        output=output,
        model=asked,
        image=data,
        options=answer.fingerprint,
    )
    async with charge(svc.store, account, cost, request_id_of(request), claim) as reservation:

        async def run() -> tuple[object, float]:
            # The account's turn first (its own line, behind its own requests only), then the gate; one
            # deadline for both, so credits are held no longer than before the line existed.
            timeout, started = svc.settings.processing_timeout_s, time.monotonic()
            async with svc.slots.hold(account, timeout):
                left = timeout - (time.monotonic() - started)
                return await svc.gate.run(render, timeout=left, memory_bytes=memory_bytes)

        try:
            result, inference_s = await _unless_client_leaves(request, run)
        except Busy:
            raise ApiError("server_busy", "The service is at capacity; retry shortly.") from None
        except (Expired, TimeoutError):  # TimeoutError: the account's turn did not come in time
            raise processing_timeout() from None
        if await request.is_disconnected():
            # Nobody will receive the result: raising refunds it instead of charging for it.
            raise client_closed_request()
    charged = 0 if reservation.replayed else reservation.amount
    metrics.observe_delivery(model_name, output, inference_s, charged)
    logged.inference_ms = round(inference_s * 1000, 1)
    logged.credits_charged = charged

    headers = {
        "X-Credits-Charged": str(reservation.amount),
        "X-Credits-Remaining": str(reservation.remaining),
        "X-Model": model_name,
        "X-Operating-Resolution": resolution,
    }
    if reservation.replayed:
        headers[idempotency.REPLAYED_HEADER] = "true"
    if answer.json:
        # Base64 and JSON of a result that can be tens of MB: off the event loop, like the decode.
        return await anyio.to_thread.run_sync(answer.response, result, output, headers)
    return answer.response(result, output, headers)


async def remove_background(request: Request) -> Response:
    return await _remove(request, "cutout")


async def remove_background_mask(request: Request) -> Response:
    return await _remove(request, "mask")
