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
from app.inference.gate import Busy, Expired
from app.inference.pipeline import Output, Pipeline
from app.removal import submission
from app.removal.job import check_headers, prepare
from app.services import services
from app.store import Account

T = TypeVar("T")

# Held in the memory admission while headers are checked, beside the uploads themselves: what Pillow
# builds from a header imaging.structure lets through (a TIFF of 65536 strips: ~15 MB).
HEADER_CHECK_BYTES = 32 * 1024 * 1024


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
    with rate.on_errors():
        response = await _process(request, account, output)
    response.headers.update(rate.headers())
    return response


async def _process(request: Request, account: Account, output: Output) -> Response:
    svc = services(request)
    # One of the account's concurrent-request slots from the body on: a client cannot hold more bodies,
    # fetches or header checks at once than its plan's max_concurrent, JSON or multipart alike.
    with svc.slots.hold(account):
        sub = await submission.read(request)
        model_name = svc.settings.default_model if sub.model is None else sub.model
        pipeline = svc.registry.get(model_name)
        if pipeline is None:
            names = ", ".join(svc.registry.names)
            raise invalid_parameter(f"Unknown model {model_name[:40]!r}. Choose one of: {names}.")
        logged = context.of_scope(request.scope)  # what the access log line says
        logged.model = model_name
        # Options, the image_url fetch and the header checks: refused before anything is reserved.
        resolution = _operating_resolution(pipeline, sub.operating_resolution)
        # A client that hangs up during a fetch stops it (and frees its slot).
        answer = await _unless_client_leaves(request, lambda: prepare(request, svc.settings, sub, output))
        # Off the event loop: work proportional to the upload (header walks, hashing) must not stall other
        # clients; inside the memory admission, what Pillow builds from a header is bounded by imaging.structure.
        check = functools.partial(check_headers, answer, svc.settings)
        try:
            async with svc.gate.admitted(HEADER_CHECK_BYTES + len(answer.image) + len(answer.options.bg_image or b"")):
                info, answer = await anyio.to_thread.run_sync(check)
        except Busy:
            raise ApiError("server_busy", "The service is at capacity; retry shortly.") from None
        data = answer.image
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
            try:
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
