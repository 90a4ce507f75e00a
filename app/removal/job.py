"""What a rembg request asks back: its options, its input bytes, its price and the response's shape.

`prepare` does everything that can refuse a request before credits are reserved
(option validation, the image_url fetch, the background image's header check);
`Answer.renderer` is the work for the worker thread and `Answer.response` the
HTTP answer. With no option, the work and the answer are exactly the plain PNG's.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass

import anyio
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from app.errors import ApiError, invalid_image, invalid_parameter
from app.http.client_address import parse_networks
from app.imaging import codec
from app.imaging.compose import BACKGROUND_PEAK_BYTES_PER_PIXEL, Rendered
from app.inference.pipeline import Output, Pipeline
from app.removal import fetch, options
from app.removal.submission import Submission
from app.settings import Settings

# Options that cost credits on top of the model (config/models.toml [option_costs]).
PRICED_OPTIONS = ("image_url", "bg_blur", "bg_image", "shadow")


@dataclass(frozen=True)
class Answer:
    image: bytes
    options: options.Options
    json: bool
    extra_cost: int
    fingerprint: str  # what the Idempotency-Key fingerprint adds ("" for a plain request)
    # Peak memory the options add to the model's own estimate (a bg_image's decode), for the admission.
    memory_bytes: int = 0

    @property
    def plain(self) -> bool:
        """The PNG bytes of today: no option changes the picture or the answer's shape."""
        return not self.json and not self.options.changes_pixels()

    def renderer(
        self, pipeline: Pipeline, output: Output, resolution: str | None = None
    ) -> Callable[[bytes], bytes | Rendered]:
        if self.plain:
            return lambda data: pipeline.render(data, output, resolution)
        chosen = self.options
        return lambda data: pipeline.render_with(data, output, chosen, resolution)

    def response(self, result: object, output: Output, headers: dict[str, str]) -> Response:
        headers = {**headers, **geometry_headers(result)}
        if isinstance(result, bytes):
            return Response(result, media_type="image/png", headers=headers)
        assert isinstance(result, Rendered)
        if not self.json:
            return Response(result.body, media_type=result.content_type, headers=headers)
        body = {"image": _file(result.body, result, output)}
        if result.mask is not None:
            body["mask"] = _file(result.mask, result, "mask")
        return JSONResponse(body, headers=headers)


# remove.bg's names: the result's size, and after a crop the cropped rectangle in the input photo.
WIDTH_HEADER, HEIGHT_HEADER = "X-Width", "X-Height"
FOREGROUND_HEADERS = ("X-Foreground-Left", "X-Foreground-Top", "X-Foreground-Width", "X-Foreground-Height")


def geometry_headers(result: object) -> dict[str, str]:
    if isinstance(result, bytes):  # the plain PNG: its size from the IHDR chunk (bytes 16-24)
        width, height = int.from_bytes(result[16:20], "big"), int.from_bytes(result[20:24], "big")
        return {WIDTH_HEADER: str(width), HEIGHT_HEADER: str(height)}
    assert isinstance(result, Rendered)
    headers = {WIDTH_HEADER: str(result.width), HEIGHT_HEADER: str(result.height)}
    if result.foreground is not None:
        headers.update(zip(FOREGROUND_HEADERS, map(str, result.foreground), strict=True))
    return headers


def _file(data: bytes, rendered: Rendered, name: str) -> dict[str, object]:
    """fal's File shape, with the bytes inline as a data URI."""
    extension = rendered.content_type.split("/")[1]
    return {
        "url": f"data:{rendered.content_type};base64,{base64.b64encode(data).decode('ascii')}",
        "content_type": rendered.content_type,
        "file_name": f"{name}.{'jpg' if extension == 'jpeg' else extension}",
        "file_size": len(data),
        "width": rendered.width,
        "height": rendered.height,
    }


JSON_TYPE = "application/json"
ACCEPT_RULE = (
    "Without `sync_mode`, the answer is JSON only when the `Accept` header ranks `application/json` strictly "
    "above the image type the answer would have (`image/png`, `image/webp` or `image/jpeg`): each type's "
    "preference is the q-value (default 1) of the most specific range naming it (`image/png`, else `image/*`, "
    "else `*/*`; `application/json`, else `application/*`, else `*/*`), 0 when none does. Equal preferences "
    "give the image: `*/*`, a browser's Accept and axios's `application/json, text/plain, */*` get the image; "
    "`Accept: application/json` alone, or `application/json, image/*;q=0.5`, get JSON."
)


def _preferences(accept: str) -> dict[str, float]:
    """Media range -> q-value; a malformed q counts as 1 (a client that lists a type wants it)."""
    ranks: dict[str, float] = {}
    for part in accept.split(","):
        media_range, *params = (piece.strip() for piece in part.split(";"))
        if not media_range:
            continue
        q = 1.0
        for param in params:
            name, _, value = param.partition("=")
            if name.strip().lower() == "q":
                try:
                    q = min(max(float(value.strip()), 0.0), 1.0)
                except ValueError:
                    q = 1.0
        media_range = media_range.lower()
        ranks[media_range] = max(q, ranks.get(media_range, 0.0))
    return ranks


def _quality(ranks: dict[str, float], media_type: str) -> float:
    kind = media_type.split("/")[0]
    for media_range in (media_type, f"{kind}/*", "*/*"):
        if media_range in ranks:
            return ranks[media_range]
    return 0.0


def wants_json(request: Request, image_type: str = "image/png") -> bool:
    """ACCEPT_RULE: JSON only when the client prefers it, strictly, to the image it would get."""
    ranks = _preferences(request.headers.get("accept", ""))
    return _quality(ranks, JSON_TYPE) > _quality(ranks, image_type)


def _probe_background(data: bytes, settings: Settings) -> tuple[str, int]:
    """The background's header checked like an upload's: its digest for the Idempotency-Key
    fingerprint, and its pixels for the memory admission."""
    try:
        info = codec.probe(data, max_pixels=settings.max_pixels, max_side=settings.max_side)
    except ApiError as err:
        if err.code == "image_too_large":
            raise codec.image_too_large(f"bg_image: {err.message}") from None
        raise invalid_image(f"bg_image: {err.message}") from None
    return hashlib.sha256(data).hexdigest(), info.width * info.height


async def prepare(
    request: Request,
    settings: Settings,
    sub: Submission,
    output: Output,
    turn: Callable[[], AbstractAsyncContextManager[None]] = contextlib.nullcontext,
) -> Answer:
    """`turn`: held around the image_url fetch (one of the account's running slots)."""
    chosen = options.parse(sub.fields, sub.bg_image, mask=output == "mask")
    json_answer = chosen.sync_mode if chosen.sync_mode is not None else wants_json(request, chosen.content_type)
    if chosen.output_mask and not json_answer:
        raise invalid_parameter(
            "output_mask returns the mask inside a JSON answer: add sync_mode=true (or Accept: application/json)."
        )
    background_digest, background_pixels = "", 0
    if chosen.bg_image is not None:
        # Off the event loop, as the photo's own probe and hash.
        background_digest, background_pixels = await anyio.to_thread.run_sync(
            _probe_background, chosen.bg_image, settings
        )
    if sub.image is not None:
        image = sub.image
    else:
        assert sub.image_url is not None
        if not settings.fetch_enabled:
            raise fetch.forbidden("This server does not fetch image URLs; upload the image instead.")
        async with turn():
            image = await fetch.fetch_image(
                sub.image_url,
                allow=parse_networks(settings.fetch_allow),
                max_bytes=settings.max_body_bytes,
                connect_timeout_s=settings.fetch_connect_timeout_s,
                total_timeout_s=settings.fetch_timeout_s,
            )
    used = {
        "image_url": sub.image_url is not None,
        "bg_blur": chosen.bg_blur is not None,
        "bg_image": chosen.bg_image is not None,
        "shadow": chosen.shadow,
    }
    extra = sum(settings.option_costs.get(name, 0) for name, on in used.items() if on)
    fingerprint = chosen.fingerprint() + (f"\n{background_digest}" if background_digest else "")
    return Answer(
        image=image,
        options=chosen,
        json=json_answer,
        extra_cost=extra,
        fingerprint=fingerprint,
        memory_bytes=background_pixels * BACKGROUND_PEAK_BYTES_PER_PIXEL,
    )
