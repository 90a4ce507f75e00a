"""POST /v2/rembg/ (cut-out PNG) and POST /v2/rembg/mask/ (mask PNG)."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import anyio
from starlette.datastructures import FormData, UploadFile
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response

from app import idempotency, images, metrics
from app.auth import authenticate
from app.billing import charge
from app.errors import (
    ApiError,
    client_closed_request,
    invalid_image,
    invalid_parameter,
    processing_timeout,
    request_id_of,
)
from app.inference.gate import Busy, Expired
from app.inference.pipeline import Output
from app.services import services
from app.store import Account

T = TypeVar("T")

FORM_FIELDS = {"image", "model"}
# Text fields are held in memory: "model" needs a few bytes. Extra parts are
# parsed (bounded) only so the error can name them.
MAX_FIELD_BYTES = 1024
MAX_FORM_PARTS = 8
SEND_HINT = (
    'Send multipart/form-data with the photo as a file part named "image" '
    '(curl: -F image=@photo.jpg) and optionally a text field "model".'
)


def _names(names: list[str]) -> str:
    # Client-chosen names are echoed only cut short and quoted.
    return ", ".join(repr(name[:40]) for name in names)


async def _read_form(request: Request) -> tuple[bytes, str | None]:
    """The upload's bytes and the requested model name, or a 400 that says what to send."""
    content_type = request.headers.get("content-type", "")
    if not content_type.lower().startswith("multipart/form-data"):
        received = content_type.split(";")[0].strip()[:60] or "no Content-Type"
        raise invalid_image(f"Expected a multipart/form-data body, got {received}. {SEND_HINT}")
    try:
        async with request.form(
            max_files=MAX_FORM_PARTS, max_fields=MAX_FORM_PARTS, max_part_size=MAX_FIELD_BYTES
        ) as form:
            return await _extract(form)
    except HTTPException as exc:
        reason = str(exc.detail).rstrip(".")
        raise invalid_parameter(f"The multipart body could not be read ({reason}). {SEND_HINT}") from None
    except ClientDisconnect:
        raise client_closed_request() from None


async def _extract(form: FormData) -> tuple[bytes, str | None]:
    items = form.multi_items()
    files = [name for name, value in items if isinstance(value, UploadFile)]
    unknown = sorted({name for name, _ in items} - FORM_FIELDS)
    if len(files) > 1:
        raise invalid_parameter(f"Send exactly one file; got {len(files)} ({_names(files)}). {SEND_HINT}")
    if "image" not in form:
        got = f" Got a file in {_names(files)}." if files else ""
        raise invalid_image(f'No file part named "image".{got} {SEND_HINT}')
    if unknown:
        raise invalid_parameter(f"Unknown form field(s): {_names(unknown)}. {SEND_HINT}")
    if len(form.getlist("image")) > 1 or len(form.getlist("model")) > 1:
        raise invalid_parameter(f'Send "image" and "model" once each. {SEND_HINT}')
    upload = form["image"]
    if not isinstance(upload, UploadFile):
        raise invalid_image(f'"image" was sent as a text field; send the photo as a file part. {SEND_HINT}')
    model = form.get("model")  # a str: the one file part allowed is "image"
    return await upload.read(), model if isinstance(model, str) else None


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
    data, model_name = await _read_form(request)
    model_name = svc.settings.default_model if model_name is None else model_name
    pipeline = svc.registry.get(model_name)
    if pipeline is None:
        names = ", ".join(svc.registry.names)
        raise invalid_parameter(f"Unknown model {model_name[:40]!r}. Choose one of: {names}.")
    request.state.model = model_name
    # Off the event loop: work proportional to the upload (header walks, hashing) must not stall other clients.
    probe = functools.partial(images.probe, data, max_pixels=svc.settings.max_pixels, max_side=svc.settings.max_side)
    await anyio.to_thread.run_sync(probe)

    render_png = pipeline.render

    def render() -> tuple[bytes, float]:
        # Timed in the worker, so the inference metric leaves out the queue wait.
        started = time.perf_counter()
        return render_png(data, output), time.perf_counter() - started

    cost = pipeline.spec.mask_cost if output == "mask" else pipeline.spec.cost
    claim = await idempotency.claim_for(
        request, account, svc.settings.idempotency_window_s, output=output, model=model_name, image=data
    )
    async with charge(svc.store, account, cost, request_id_of(request), claim) as reservation:
        try:
            with svc.slots.hold(account):
                png, inference_s = await _unless_client_leaves(
                    request, lambda: svc.gate.run(render, timeout=svc.settings.processing_timeout_s)
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
    request.state.inference_ms = round(inference_s * 1000, 1)
    request.state.credits_charged = charged

    headers = {
        "X-Credits-Charged": str(reservation.amount),
        "X-Credits-Remaining": str(reservation.remaining),
        "X-Model": model_name,
    }
    if reservation.replayed:
        headers[idempotency.REPLAYED_HEADER] = "true"
    return Response(png, media_type="image/png", headers=headers)


async def remove_background(request: Request) -> Response:
    return await _remove(request, "cutout")


async def remove_background_mask(request: Request) -> Response:
    return await _remove(request, "mask")
