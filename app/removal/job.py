"""What a rembg request asks back: its options, its input bytes, its price and the response's shape.

`prepare` does everything that can refuse a request before credits are reserved
(option validation, the image_url fetch, the background image's header check);
`Answer.renderer` is the work for the worker thread and `Answer.response` the
HTTP answer. With no option, the work and the answer are exactly the plain PNG's.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Callable
from dataclasses import dataclass

import anyio
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from app.errors import ApiError, invalid_image, invalid_parameter
from app.http.client_address import parse_networks
from app.imaging import codec
from app.imaging.compose import BACKGROUND_PEAK_BYTES_PER_PIXEL, Rendered
from app.inference.pipeline import Output, Pipeline
from app.removal import fetch, options, plan
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
        if isinstance(result, bytes):
            return Response(result, media_type="image/png", headers=headers)
        assert isinstance(result, Rendered)
        if not self.json:
            return Response(result.body, media_type=result.content_type, headers=headers)
        body = {"image": _file(result.body, result, output)}
        if result.mask is not None:
            body["mask"] = _file(result.mask, result, "mask")
        return JSONResponse(body, headers=headers)


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


def wants_json(request: Request) -> bool:
    accept = request.headers.get("accept", "")
    return "application/json" in {part.split(";")[0].strip().lower() for part in accept.split(",")}


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


def choose(sub: Submission, output: Output, accept_json: bool) -> tuple[options.Options, bool]:
    """The options asked for and whether the answer is JSON, or a 400: what a job checks at submission."""
    chosen = options.parse(sub.fields, sub.bg_image, mask=output == "mask")
    json_answer = chosen.sync_mode if chosen.sync_mode is not None else accept_json
    if chosen.output_mask and not json_answer:
        raise invalid_parameter(
            "output_mask returns the mask inside a JSON answer: add sync_mode=true (or Accept: application/json)."
        )
    return chosen, json_answer


async def prepare(request: Request, settings: Settings, sub: Submission, output: Output) -> Answer:
    return await prepare_for(settings, sub, output, accept_json=wants_json(request))


async def prepare_for(settings: Settings, sub: Submission, output: Output, *, accept_json: bool) -> Answer:
    chosen, json_answer = choose(sub, output, accept_json)
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
        image = await fetch.fetch_image(
            sub.image_url,
            allow=parse_networks(settings.fetch_allow),
            max_bytes=settings.max_body_bytes,
            connect_timeout_s=settings.fetch_connect_timeout_s,
            total_timeout_s=settings.fetch_timeout_s,
        )
    extra = plan.options_cost(settings, chosen, image_url=sub.image_url is not None)
    fingerprint = chosen.fingerprint() + (f"\n{background_digest}" if background_digest else "")
    return Answer(
        image=image,
        options=chosen,
        json=json_answer,
        extra_cost=extra,
        fingerprint=fingerprint,
        memory_bytes=background_pixels * BACKGROUND_PEAK_BYTES_PER_PIXEL,
    )
