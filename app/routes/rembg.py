"""POST /v2/rembg/ (cut-out) and POST /v2/rembg/mask/ (mask), as a flat script of named steps:

authenticate -> rate limit -> read the submission -> choose the model -> order (options, price,
answer) -> the job (the photo's header checked) -> (one concurrent-request slot of the account,
held to the end:) [fetch an image_url] -> claim the Idempotency-Key and reserve the credits -> run
it in a worker -> charge -> respond.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import Awaitable, Callable
from typing import TypeVar

from starlette.requests import Request
from starlette.responses import Response

from app.accounts import idempotency
from app.accounts.auth import authenticate
from app.accounts.billing import charge
from app.errors import ApiError, client_closed_request, processing_timeout
from app.http import context, metrics
from app.inference.gate import Busy, Expired
from app.jobs import routes as job_routes
from app.removal import job as planning
from app.removal import respond, submission
from app.removal.job import Job, Order, Output
from app.removal.render import Result, render
from app.services import Services, services
from app.store import Account, Reservation

T = TypeVar("T")


async def _until_disconnected(request: Request) -> None:
    # The body has been read: the next message uvicorn delivers is the disconnect.
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def _unless_client_leaves(request: Request, work: Callable[[], Awaitable[T]]) -> T:
    """`work`'s result, or 499 as soon as the client hangs up: `work` is then cancelled, so a
    queued job is dropped and a running one stopped (WorkerGate.run) instead of done for nobody."""
    task = asyncio.ensure_future(work())
    watcher = asyncio.ensure_future(_until_disconnected(request))
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for pending in (task, watcher):
            pending.cancel()
    if task.done() and not task.cancelled():
        return task.result()
    with contextlib.suppress(asyncio.CancelledError):
        await task  # let the gate drop or stop the job before the refund
    raise client_closed_request()


async def _run(request: Request, svc: Services, job: Job) -> Result:
    """The job in a worker, under the gate's queue, timeout and memory admission."""
    work = functools.partial(render, job, svc.settings.png_compress_level, svc.settings.png_fast)
    try:
        return await _unless_client_leaves(
            request,
            lambda: svc.gate.run(work, timeout=svc.settings.processing_timeout_s, memory_bytes=job.memory_bytes),
        )
    except Busy:
        raise ApiError("server_busy", "The service is at capacity; retry shortly.") from None
    except Expired:
        raise processing_timeout() from None


def _record(logged: context.RequestInfo, asked: Order, result: Result, reservation: Reservation) -> None:
    """The delivery, as the metrics and the access log line count it."""
    charged = 0 if reservation.replayed else reservation.amount
    metrics.observe_delivery(asked.model, asked.output, result.inference_s, charged)
    logged.inference_ms = round(result.inference_s * 1000, 1)
    logged.credits_charged = charged


async def _serve(request: Request, svc: Services, account: Account, output: Output) -> Response:
    logged = context.of_scope(request.scope)  # what the access log line says
    sub = await submission.read(request)
    if svc.jobs is not None and (sub.webhook_url is not None or job_routes.wants_async(request)):
        return await job_routes.submit_single(request, account, sub, output)  # 202: run later (app/jobs/)
    pipeline = planning.choose_model(sub, svc.settings, svc.registry)
    logged.model = pipeline.name
    asked = await planning.order(sub, pipeline, output, request.headers.get("accept", ""), svc.settings)
    # An upload's header is checked before a slot is taken: a burst of bad files is answered 400, not 429.
    job = None if sub.image is None else await planning.job(asked, sub.image, svc.settings)
    # One slot from the image_url fetch to the result: slow URLs cannot pile up fetches either.
    with svc.slots.hold(account):
        if job is None:
            job = await planning.job(asked, await planning.fetch_photo(sub, svc.settings), svc.settings)
        window = svc.settings.idempotency_window_s
        claim = await idempotency.claim_for(
            request, account, window, output=output, model=asked.asked, image=job.image, options=asked.fingerprint
        )
        async with charge(svc.store, account, asked.price, logged.request_id, claim) as reservation:
            result = await _run(request, svc, job)
            if await request.is_disconnected():
                # Nobody will receive the result: raising refunds it instead of charging for it.
                raise client_closed_request()
    _record(logged, asked, result, reservation)
    return await respond.response(asked, result, reservation)


async def _remove(request: Request, output: Output) -> Response:
    svc = services(request)
    account = await authenticate(request, svc.store, svc.limits)
    rate = await svc.limits.hit(account)
    with rate.on_errors():
        response = await _serve(request, svc, account, output)
    response.headers.update(rate.headers())
    return response


async def remove_background(request: Request) -> Response:
    return await _remove(request, "cutout")


async def remove_background_mask(request: Request) -> Response:
    return await _remove(request, "mask")
