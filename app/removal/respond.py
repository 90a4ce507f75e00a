"""The HTTP answer of a removal: the image's bytes, or fal's JSON shape with data URIs."""

from __future__ import annotations

import base64

import anyio
from starlette.responses import JSONResponse, Response

from app.accounts import idempotency
from app.removal.job import Job
from app.removal.render import Result
from app.store import Reservation


def headers(job: Job, reservation: Reservation) -> dict[str, str]:
    answer = {
        "X-Credits-Charged": str(reservation.amount),
        "X-Credits-Remaining": str(reservation.remaining),
        "X-Model": job.model,
        "X-Operating-Resolution": job.resolution,
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


def _json(job: Job, result: Result, with_headers: dict[str, str]) -> JSONResponse:
    body = {"image": _file(result.image.body, result, job.output)}
    if result.image.mask is not None:
        body["mask"] = _file(result.image.mask, result, "mask")
    return JSONResponse(body, headers=with_headers)


async def response(job: Job, result: Result, reservation: Reservation) -> Response:
    with_headers = headers(job, reservation)
    if job.answer == "image":
        return Response(result.image.body, media_type=result.content_type, headers=with_headers)
    # Base64 and JSON of a result that can be tens of MB: off the event loop, like the decode.
    return await anyio.to_thread.run_sync(_json, job, result, with_headers)
