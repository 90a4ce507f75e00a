"""The HTTP answer of a removal: the image's bytes, or fal's JSON shape with data URIs."""

from __future__ import annotations

import base64

import anyio
from starlette.responses import JSONResponse, Response

from app.accounts import idempotency
from app.accounts.billing import Bill
from app.removal.job import Order
from app.removal.render import Result

CONFIDENCE_HEADER = "X-Mask-Confidence"
ESCALATED_HEADER = "X-Model-Escalated"


def confidence(result: Result) -> float:
    """The mask's confidence as the answer states it (header and JSON alike)."""
    return round(result.confidence, 3)


def headers(asked: Order, result: Result, bill: Bill, unlimited: bool = False) -> dict[str, str]:
    answer = {
        "X-Credits-Charged": str(bill.amount),
        "X-Model": result.model,
        "X-Operating-Resolution": result.resolution,
        CONFIDENCE_HEADER: f"{confidence(result):.3f}",
    }
    if not unlimited:  # an unlimited account has no balance to count down
        answer["X-Credits-Remaining"] = str(bill.remaining)
    if result.escalated is not None:  # model=auto
        answer[ESCALATED_HEADER] = "true" if result.escalated else "false"
    if bill.reservation.replayed:
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
    body: dict[str, object] = {"image": _file(result.image.body, result, asked.output)}
    if result.image.mask is not None:
        body["mask"] = _file(result.image.mask, result, "mask")
    body["confidence"] = confidence(result)
    return JSONResponse(body, headers=with_headers)


async def response(asked: Order, result: Result, bill: Bill, unlimited: bool = False) -> Response:
    with_headers = headers(asked, result, bill, unlimited)
    if asked.answer == "image":
        return Response(result.image.body, media_type=result.content_type, headers=with_headers)
    # Base64 and JSON of a result that can be tens of MB: off the event loop, like the decode.
    return await anyio.to_thread.run_sync(_json, asked, result, with_headers)
