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
    processing_timeout,
)
from app.http import context, metrics
from app.http.context import request_id_of
from app.imaging import codec
from app.inference.gate import Busy, Expired
from app.inference.pipeline import Output
from app.jobs import routes as job_routes
from app.removal import plan, submission
from app.removal.job import prepare
from app.services import services
from app.store import Account

T = TypeVar("T")


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
    with rate.on_errors():
        response = await _process(request, account, output)
    response.headers.update(rate.headers())
    return response


async def _process(request: Request, account: Account, output: Output) -> Response:
    svc = services(request)
    sub = await submission.read(request)
    if svc.jobs is not None and (sub.webhook_url is not None or job_routes.wants_async(request)):
        return await job_routes.submit_single(request, account, sub, output)  # 202: run later (app/jobs/)
    model_name, pipeline = plan.pipeline_for(svc.registry, svc.settings, sub.model)
    logged = context.of_scope(request.scope)  # what the access log line says
    logged.model = model_name
    # Options, the image_url fetch and the background's header check: refused before anything is reserved.
    resolution = plan.operating_resolution(pipeline, sub.operating_resolution)
    # A fetch holds one of the account's concurrent-request slots, so slow URLs cannot pile up fetches.
    with svc.slots.hold(account):
        answer = await prepare(request, svc.settings, sub, output)
    data = answer.image
    # Off the event loop: work proportional to the upload (header walks, hashing) must not stall other clients.
    probe = functools.partial(codec.probe, data, max_pixels=svc.settings.max_pixels, max_side=svc.settings.max_side)
    info = await anyio.to_thread.run_sync(probe)
    # Admission by memory: the job's estimated peak, from its pixels and the model's measured cost,
    # plus what its options add (a background image's decode).
    memory_bytes = plan.memory_bytes(pipeline, info, answer.memory_bytes)

    render_body = answer.renderer(pipeline, output, resolution)

    def render() -> tuple[object, float]:
        # Timed in the worker, so the inference metric leaves out the queue wait.
        started = time.perf_counter()
        return render_body(data), time.perf_counter() - started

    cost = plan.cost(pipeline, resolution, output, answer.extra_cost)
    asked = plan.asked_model(model_name, pipeline, resolution)
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
        try:
            with svc.slots.hold(account):
                result, inference_s = await _unless_client_leaves(
                    request,
                    lambda: svc.gate.run(render, timeout=svc.settings.processing_timeout_s, memory_bytes=memory_bytes),
                )
        except Busy:
            raise ApiError("server_busy", "The service is at capacity; retry shortly.") from None
        except Expired:
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
