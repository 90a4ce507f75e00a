"""POST /v2/rembg/ (cut-out PNG) and POST /v2/rembg/mask/ (mask PNG)."""

from __future__ import annotations

from starlette.datastructures import FormData, UploadFile
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response

from app import idempotency, images
from app.auth import authenticate
from app.billing import charge
from app.errors import client_closed_request, invalid_image, invalid_parameter, request_id_of, service_unavailable
from app.inference.gate import Busy, Expired
from app.inference.pipeline import Output
from app.services import services
from app.store import Account

FORM_FIELDS = {"image", "model"}
MAX_FIELD_BYTES = 1024
SEND_HINT = 'Send multipart/form-data with the photo in a file field named "image" (and optionally "model").'


async def _read_form(request: Request) -> tuple[bytes, str | None]:
    """The upload's bytes and the requested model name, or a 400 that says what to send."""
    content_type = request.headers.get("content-type", "")
    if not content_type.startswith("multipart/form-data"):
        raise invalid_image(f"No image received. {SEND_HINT}")
    try:
        async with request.form(
            max_files=1, max_fields=len(FORM_FIELDS), max_part_size=MAX_FIELD_BYTES
        ) as form:
            return await _extract(form)
    except HTTPException as exc:
        raise invalid_parameter(f"Malformed multipart body ({exc.detail}). {SEND_HINT}") from None
    except ClientDisconnect:
        raise client_closed_request() from None


async def _extract(form: FormData) -> tuple[bytes, str | None]:
    upload = form.get("image")
    if upload is None:
        raise invalid_image(f"No image received. {SEND_HINT}")
    unknown = sorted(set(form.keys()) - FORM_FIELDS)
    if unknown:
        raise invalid_parameter(f"Unknown form field(s): {', '.join(unknown)}. {SEND_HINT}")
    if not isinstance(upload, UploadFile):
        raise invalid_image(f'"image" must be a file, not a text field. {SEND_HINT}')
    model = form.get("model")
    if model is not None and not isinstance(model, str):
        raise invalid_parameter('"model" must be a text field, not a file.')
    return await upload.read(), model


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
    model_name = (model_name or svc.settings.default_model).strip().lower()
    pipeline = svc.registry.get(model_name)
    if pipeline is None:
        names = ", ".join(svc.registry.names)
        raise invalid_parameter(f"Unknown model {model_name!r}. Choose one of: {names}.")
    images.probe(data, max_pixels=svc.settings.max_pixels, max_side=svc.settings.max_side)

    cost = pipeline.spec.mask_cost if output == "mask" else pipeline.spec.cost
    claim = idempotency.claim_for(
        request, account, svc.settings.idempotency_window_s, output=output, model=model_name, image=data
    )
    async with charge(svc.store, account, cost, request_id_of(request), claim) as reservation:
        try:
            png = await svc.gate.run(pipeline.render, data, output, timeout=svc.settings.processing_timeout_s)
        except Busy:
            raise service_unavailable("The service is at capacity; retry shortly.", code="server_busy") from None
        except Expired:
            raise service_unavailable(
                "Processing took too long and was abandoned; nothing was charged.", code="processing_timeout"
            ) from None
        if await request.is_disconnected():
            # Nobody will receive the result: raising refunds it instead of charging for it.
            raise client_closed_request()

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
