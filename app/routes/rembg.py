"""POST /v2/rembg/ (cut-out) and POST /v2/rembg/mask/ (mask), as a flat script of named steps:

authenticate -> rate limit -> a place in the account's line (or 429; 409 when its Idempotency-Key is
already in line) -> the account's turn, held to the end: read the submission -> choose the model ->
order (options, price, answer) -> [fetch an image_url] -> the job (the photo's and a background's
headers checked, in the memory admission) -> claim the Idempotency-Key and reserve the credits ->
run it in a worker (or serve a replay's kept answer) -> charge -> respond.

The turn is one of the plan's `max_concurrent` running slots (app/accounts/admission.py), waited for
in the account's own line before the body is read: a waiting request holds a connection, not a body,
so one client holds no more bodies, fetches or header checks at once than its plan runs (issue 21),
and its backlog never enters the worker queue other accounts use.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TypeVar

from starlette.requests import Request
from starlette.responses import Response

from app.accounts import idempotency
from app.accounts.auth import authenticate
from app.accounts.billing import Bill, charge
from app.errors import ApiError, client_closed_request, processing_timeout
from app.http import context, metrics
from app.inference.gate import Busy, Expired
from app.jobs import routes as job_routes
from app.removal import job as planning
from app.removal import respond, submission
from app.removal.job import Job, Order, Output
from app.removal.render import Result, render
from app.services import Services, services
from app.store import Account, IdempotencyClaim, StoredAnswer

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


@contextlib.asynccontextmanager
async def _turn(svc: Services, account: Account) -> AsyncIterator[float]:
    """The account's turn (behind its own requests only), held to the end of the block; yields when the
    wait began (time.monotonic), so one deadline covers the wait and the work. Nobody watches for a
    hang-up while waiting: the body is still unread, and reading it is the only way to hear one."""
    started = time.monotonic()
    try:
        await svc.slots.acquire(account, svc.settings.processing_timeout_s)
    except TimeoutError:
        raise processing_timeout() from None
    try:
        yield started
    finally:
        svc.slots.release(account)


async def _run(request: Request, svc: Services, job: Job, started: float) -> Result:
    """The job in a worker, under the gate's queue, timeout and memory admission; the timeout counts
    from `started`, the wait for the account's turn included, so credits are held no longer than that."""
    work = functools.partial(render, job, svc.settings.png_compress_level, svc.settings.png_fast)
    timeout = svc.settings.processing_timeout_s - (time.monotonic() - started)
    try:
        return await _unless_client_leaves(
            request, lambda: svc.gate.run(work, timeout=timeout, memory_bytes=job.memory_bytes)
        )
    except Busy:
        raise ApiError("server_busy", "The service is at capacity; retry shortly.") from None
    except Expired:
        raise processing_timeout() from None


def _record(logged: context.RequestInfo, asked: Order, result: Result, bill: Bill) -> None:
    """The delivery, as the metrics and the access log line count it."""
    charged = 0 if bill.reservation.replayed else bill.amount
    metrics.observe_delivery(asked.model, asked.output, result.inference_s, charged)
    logged.inference_ms = round(result.inference_s * 1000, 1)
    logged.credits_charged = charged


async def _job(request: Request, svc: Services, sub: submission.Submission, asked: Order) -> Job:
    """The job: an image_url fetched (a client that hangs up stops it, and frees its slot), the headers
    checked in the memory admission."""

    async def planned() -> Job:
        image = sub.image if sub.image is not None else await planning.fetch_photo(sub, svc.settings)
        return await planning.job(asked, image, svc.settings, svc.gate.admitted)

    try:
        return await _unless_client_leaves(request, planned)
    except Busy:
        raise ApiError("server_busy", "The service is at capacity; retry shortly.") from None


async def _serve(request: Request, svc: Services, account: Account, route: Output, started: float) -> Response:
    logged = context.of_scope(request.scope)  # what the access log line says
    sub = await submission.read(request)
    output = planning.output_of(sub, route)  # the route's, or the mask that channels=alpha asks for
    if svc.jobs is not None and (sub.webhook_url is not None or job_routes.wants_async(request)):
        return await job_routes.submit_single(request, account, sub, output)  # 202: run later (app/jobs/)
    pipeline, then = planning.choose_model(sub, svc.settings, svc.registry)
    logged.model = pipeline.name if then is None else planning.AUTO
    asked = await planning.order(sub, pipeline, output, request.headers.get("accept", ""), svc.settings, then=then)
    job = await _job(request, svc, sub, asked)
    window = svc.settings.idempotency_window_s
    claim = await idempotency.claim_for(
        request, account, window, output=output, model=asked.asked, image=job.image, options=asked.fingerprint
    )
    return await _deliver(request, svc, account, job, claim, logged, started)


async def _deliver(
    request: Request,
    svc: Services,
    account: Account,
    job: Job,
    claim: IdempotencyClaim | None,
    logged: context.RequestInfo,
    started: float,
) -> Response:
    """Reserve, run, respond, charge; a retry under a completed Idempotency-Key is served the answer its
    first request delivered (kept by the commit), never recomputed for free."""
    answer: StoredAnswer | None = None
    async with charge(svc.store, account, job.order.price, logged.request_id, claim, keep=lambda: answer) as bill:
        if bill.reservation.replayed:
            replayed = respond.replay(job.order, bill, account.unlimited)
            if replayed is None:
                # Nothing kept to serve (an answer over the bound, or the other shape): new work, charged so.
                return await _deliver(request, svc, account, job, None, logged, started)
            logged.credits_charged = 0
            return replayed
        result = await _run(request, svc, job, started)
        if await request.is_disconnected():
            # Nobody will receive the result: raising refunds it instead of charging for it.
            raise client_closed_request()
        bill.settle_for(job.order.price_of(bool(result.escalated)))  # auto: what ran; the rest back
        response = await respond.response(job.order, result, bill, account.unlimited)
        if claim is not None:
            answer = respond.kept(response)
    _record(logged, job.order, result, bill)
    return response


async def _remove(request: Request, output: Output) -> Response:
    svc = services(request)
    account = await authenticate(request, svc.store, svc.limits)
    rate = await svc.limits.hit(account)
    with rate.on_errors(), svc.slots.admit(account, idempotency.client_key(request)):
        async with _turn(svc, account) as started:
            response = await _serve(request, svc, account, output, started)
    response.headers.update(rate.headers())
    return response


async def remove_background(request: Request) -> Response:
    return await _remove(request, "cutout")


async def remove_background_mask(request: Request) -> Response:
    return await _remove(request, "mask")
