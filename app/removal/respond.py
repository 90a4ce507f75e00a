"""The HTTP answer of a removal: the image's bytes, or fal's JSON shape with data URIs."""

from __future__ import annotations

import base64

import anyio
from starlette.responses import JSONResponse, Response

from app.accounts import idempotency
from app.accounts.billing import Bill
from app.removal.accept import OCTET_TYPE
from app.removal.job import Order
from app.removal.render import Result
from app.store import StoredAnswer

CONFIDENCE_HEADER = "X-Mask-Confidence"
ESCALATED_HEADER = "X-Model-Escalated"
# remove.bg's names: the result's size, and after a crop the kept rectangle in the input photo.
WIDTH_HEADER, HEIGHT_HEADER = "X-Width", "X-Height"
FOREGROUND_HEADERS = ("X-Foreground-Left", "X-Foreground-Top", "X-Foreground-Width", "X-Foreground-Height")


def confidence(result: Result) -> float:
    """The mask's confidence as the answer states it (header and JSON alike)."""
    return round(result.confidence, 3)


def _result_headers(result: Result) -> dict[str, str]:
    """What the result itself says: its confidence, size, crop and (model=auto) escalation."""
    image = result.image
    answer = {CONFIDENCE_HEADER: f"{confidence(result):.3f}", WIDTH_HEADER: str(image.width)}
    answer[HEIGHT_HEADER] = str(image.height)
    if image.foreground is not None:
        answer.update(zip(FOREGROUND_HEADERS, map(str, image.foreground), strict=True))
    if result.escalated is not None:
        answer[ESCALATED_HEADER] = "true" if result.escalated else "false"
    return answer


def headers(asked: Order, result: Result | None, bill: Bill, unlimited: bool = False) -> dict[str, str]:
    """The answer's headers; `result` None for a replay (its kept body is all that was kept)."""
    answer = {"X-Credits-Charged": str(bill.amount), "X-Model": asked.model if result is None else result.model}
    if result is not None:
        answer["X-Operating-Resolution"] = result.resolution
        answer.update(_result_headers(result))
    elif asked.escalation is None:  # a replay of model=auto cannot say which model ran: it was not kept
        answer["X-Operating-Resolution"] = asked.resolution
    if not unlimited:  # an unlimited account has no balance to count down
        answer["X-Credits-Remaining"] = str(bill.remaining)
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
    if asked.answer != "json":
        media_type = OCTET_TYPE if asked.answer == "bytes" else result.content_type
        return Response(result.image.body, media_type=media_type, headers=with_headers)
    # Base64 and JSON of a result that can be tens of MB: off the event loop, like the decode.
    return await anyio.to_thread.run_sync(_json, asked, result, with_headers)


def kept(response: Response) -> StoredAnswer | None:
    """What to keep with the Idempotency-Key: the answer's bytes, when not over the bound."""
    body = bytes(response.body)
    if len(body) > idempotency.MAX_STORED_ANSWER_BYTES:
        return None
    return StoredAnswer(response.media_type or "application/octet-stream", body)


def replay(asked: Order, bill: Bill, unlimited: bool = False) -> Response | None:
    """A retry's answer from the one its first request delivered, or None: nothing was kept (over
    MAX_STORED_ANSWER_BYTES), or the retry asks for the other shape (JSON or bytes)."""
    answer = bill.reservation.answer
    if answer is None or (answer.content_type == "application/json") != (asked.answer == "json"):
        return None
    return Response(answer.body, media_type=answer.content_type, headers=headers(asked, None, bill, unlimited))
