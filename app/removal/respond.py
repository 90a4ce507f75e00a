"""The HTTP answer of a removal: the image's bytes, or fal's JSON shape with data URIs."""

from __future__ import annotations

import base64

import anyio
from starlette.responses import JSONResponse, Response

from app.accounts import idempotency
from app.removal.job import Order
from app.removal.render import Result
from app.store import Reservation


def headers(asked: Order, reservation: Reservation) -> dict[str, str]:
    answer = {
        "X-Credits-Charged": str(reservation.amount),
        "X-Credits-Remaining": str(reservation.remaining),
        "X-Model": asked.model,
        "X-Operating-Resolution": asked.resolution,
    }
    if reservation.replayed:
        answer[idempotency.REPLAYED_HEADER] = "true"
    return answer


def _file(data: bytes, result: Result, name: str) -> dict[str, object]:
    """fal's File shape, with the bytes inline as a data URI."""
    extension = result.content_type.split("/")[1]
    image = result.image
    return {
        "url": f"data:{result.content_type};base64,{base64.b64encode(data).decode('ascii')}",
        "content_type": result.content_type,
        "file_name": f"{name}.{'jpg' if extension == 'jpeg' else extension}",
        "file_size": len(data),
        "width": image.width,
        "height": image.height,
    }


def _json(asked: Order, result: Result, with_headers: dict[str, str]) -> JSONResponse:
    body = {"image": _file(result.image.body, result, asked.output)}
    if result.image.mask is not None:
        body["mask"] = _file(result.image.mask, result, "mask")
    return JSONResponse(body, headers=with_headers)


async def response(asked: Order, result: Result, reservation: Reservation) -> Response:
    with_headers = headers(asked, reservation)
    if asked.answer == "image":
        return Response(result.image.body, media_type=result.content_type, headers=with_headers)
    # Base64 and JSON of a result that can be tens of MB: off the event loop, like the decode.
    return await anyio.to_thread.run_sync(_json, asked, result, with_headers)
