"""Planning a removal: from a Submission to a typed, frozen Job, before anything is reserved.

Everything that can refuse a request before credits are reserved happens here, in three steps:
`order` checks what is asked (the operating resolution, the options, the answer's shape) and prices
it; `fetch_photo` brings an image_url's bytes; `job` checks the photo's and a background's headers
(inside the account's slot and the memory admission) and estimates the memory. The Job is all the
rest of the request needs: what to run (app/removal/render.py), what to charge, the Idempotency-Key
fingerprint, the memory estimate and the answer's shape (app/removal/respond.py).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Literal

import anyio

from app.accounts import pricing
from app.errors import ApiError, invalid_image, invalid_parameter
from app.http.client_address import parse_networks
from app.imaging import codec
from app.imaging.compose import BACKGROUND_PEAK_BYTES_PER_PIXEL
from app.inference.pipeline import Pipeline
from app.inference.registry import ModelRegistry
from app.removal import fetch, options
from app.removal.accept import Answer, answer_for
from app.removal.fetch_transport import fetch_image
from app.removal.submission import Submission
from app.settings import Settings

Output = pricing.Output
Source = Literal["upload", "image_url"]
AUTO = "auto"  # model=auto: config/models.toml [auto]


@dataclass(frozen=True)
class Escalation:
    """model=auto: when the order's model answers with a confidence below `below`, `then` runs too
    and its answer is given. The order reserves the larger price and charges what ran."""

    then: Pipeline
    below: float
    first_price: int  # credits when the first model's answer is given
    then_price: int  # credits when it escalated


@dataclass(frozen=True)
class Order:
    """What a submission asks, checked and priced: the job but for its photo."""

    source: Source
    pipeline: Pipeline
    resolution: str  # the operating resolution it runs at
    output: Output
    options: options.Options
    answer: Answer
    price: int  # credits
    fingerprint: str  # what the Idempotency-Key fingerprint adds to output, model and image
    escalation: Escalation | None = None  # model=auto

    @property
    def model(self) -> str:
        return AUTO if self.escalation is not None else self.pipeline.name

    def price_of(self, escalated: bool) -> int:
        """The credits for the answer given: what ran (auto reserves the larger, `price`)."""
        if self.escalation is None:
            return self.price
        return self.escalation.then_price if escalated else self.escalation.first_price

    @property
    def asked(self) -> str:
        """The model as the fingerprint names it: another resolution is another request, and the
        default keeps the fingerprint it always had."""
        default = self.resolution == self.pipeline.resolutions[0] or self.escalation is not None
        return self.model if default else f"{self.model}@{self.resolution}"


@dataclass(frozen=True)
class Job:
    order: Order
    image: bytes  # the photo: uploaded, or fetched from image_url
    memory_bytes: int  # the estimated peak, for the memory admission


def offered(settings: Settings, registry: ModelRegistry) -> list[str]:
    """The model names a client may send: the loaded models, and auto when both of its are loaded."""
    names = list(registry.names)
    auto = settings.auto
    if auto is not None and registry.get(auto.first) is not None and registry.get(auto.escalate_to) is not None:
        names.append(AUTO)
    return names


def choose_model(sub: Submission, settings: Settings, registry: ModelRegistry) -> tuple[Pipeline, Pipeline | None]:
    """The model the submission names (or the default), and for auto the one it may escalate to;
    or a 400 naming those there are."""
    name = settings.default_model if sub.model is None else sub.model
    if name == AUTO and settings.auto is not None and AUTO in offered(settings, registry):
        first, then = registry.get(settings.auto.first), registry.get(settings.auto.escalate_to)
        assert first is not None and then is not None
        return first, then
    pipeline = registry.get(name)
    if pipeline is None:
        names = ", ".join(offered(settings, registry))
        raise invalid_parameter(f"Unknown model {name[:40]!r}. Choose one of: {names}.")
    return pipeline, None


def _operating_resolution(pipeline: Pipeline, value: str | None) -> str:
    """The resolution asked for (default: the model's own), or a 400 naming those the model accepts."""
    if value is None or value.strip().lower() == "auto":  # auto: the model's own (the form's default)
        return pipeline.resolutions[0]
    if value.strip().lower() in pipeline.resolutions:
        return value.strip().lower()
    accepted = ", ".join(pipeline.resolutions)
    raise invalid_parameter(
        f"Model {pipeline.name!r} cannot run at operating_resolution {value[:40]!r}; it accepts: {accepted}."
    )


def _probe_background(data: bytes, settings: Settings) -> int:
    """The background's header checked like an upload's: its pixels, for the memory admission."""
    try:
        info = codec.probe(data, max_pixels=settings.max_pixels, max_side=settings.max_side)
    except ApiError as err:
        if err.code == "image_too_large":
            raise codec.image_too_large(f"bg_image: {err.message}") from None
        raise invalid_image(f"bg_image: {err.message}") from None
    return info.width * info.height


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _check_headers(image: bytes, background: bytes | None, settings: Settings) -> tuple[codec.ImageInfo, int]:
    """The photo's header, and the background's pixels (0 without one)."""
    info = codec.probe(image, max_pixels=settings.max_pixels, max_side=settings.max_side)
    return info, 0 if background is None else _probe_background(background, settings)


# Held in the memory admission while headers are checked, beside the uploads themselves: what Pillow
# builds from a header that imaging.structure lets through (a TIFF of 65536 strips: ~15 MB).
HEADER_CHECK_BYTES = 32 * 1024 * 1024

Admit = Callable[[int], AbstractAsyncContextManager[None]]


async def fetch_photo(sub: Submission, settings: Settings) -> bytes:
    """The photo at the submission's image_url, or the 400 that says why not."""
    if sub.image_url is None:
        raise invalid_image("No image: send an image or an image_url.")  # a Submission has one or the other
    return await _fetched(sub.image_url, settings)


def output_of(sub: Submission, route: Output) -> Output:
    """The route's output, or the mask when `channels=alpha` (remove.bg's, PhotoRoom's) asks for it."""
    if sub.output is None or sub.output == route:
        return route
    if route == "mask":
        raise invalid_parameter("POST /v2/rembg/mask/ answers the mask; channels=rgba asks for POST /v2/rembg/.")
    return "mask"


async def _fetched(url: str, settings: Settings) -> bytes:
    if not settings.fetch_enabled:
        raise fetch.forbidden("This server does not fetch image URLs; upload the image instead.")
    return await fetch_image(
        url,
        allow=parse_networks(settings.fetch_allow),
        max_bytes=settings.max_body_bytes,
        connect_timeout_s=settings.fetch_connect_timeout_s,
        total_timeout_s=settings.fetch_timeout_s,
    )


def _priced_options(sub: Submission, chosen: options.Options) -> set[str]:
    used = {
        "image_url": sub.image_url is not None or sub.bg_image_url is not None,  # a fetch, of either
        "bg_blur": chosen.finish.bg_blur is not None,
        "bg_image": chosen.bg_image is not None,
        "shadow": chosen.finish.shadow,
    }
    return {name for name, on in used.items() if on}


def _prices(
    sub: Submission,
    chosen: options.Options,
    pipeline: Pipeline,
    resolution: str,
    output: Output,
    then: Pipeline | None,
    settings: Settings,
) -> tuple[int, Escalation | None]:
    """The order's price and, for model=auto, its escalation with both prices (the options priced alike for
    either): the order reserves the larger."""
    used = _priced_options(sub, chosen)
    runs = [(pipeline.spec, resolution)] + ([] if then is None else [(then.spec, then.resolutions[0])])
    prices = pricing.costs(settings, runs, output, used)
    if then is None:
        return prices[0], None
    assert settings.auto is not None
    return max(prices), Escalation(then, settings.auto.below, prices[0], prices[1])


async def order(
    sub: Submission,
    pipeline: Pipeline,
    output: Output,
    accept: str,
    settings: Settings,
    fetch_background: bool = True,
    then: Pipeline | None = None,
) -> Order:
    """What the submission asks of `pipeline` (model=auto: escalating to `then`), or the 4xx that refuses it.
    fetch_background=False: a bg_image_url is priced and checked but not fetched (an asynchronous job's
    submission; it is fetched when the job runs)."""
    if then is not None and sub.operating_resolution is not None:
        raise invalid_parameter(
            "model=auto runs each model at its own operating resolution: leave operating_resolution out."
        )
    resolution = _operating_resolution(pipeline, sub.operating_resolution)
    if sub.bg_image is not None and sub.bg_image_url is not None:
        raise invalid_parameter("Send either a bg_image or a bg_image_url, not both.")
    # A background to fetch stands as a placeholder while the options are checked (nothing fetched yet).
    background = b"" if sub.bg_image_url is not None else sub.bg_image
    chosen = options.parse(sub.fields, background, mask=output == "mask")
    if sub.bg_image_url is not None and fetch_background:  # remove.bg's: fetched like image_url
        chosen = dataclasses.replace(chosen, bg_image=await _fetched(sub.bg_image_url, settings))
    fingerprint = chosen.fingerprint()
    price, escalation = _prices(sub, chosen, pipeline, resolution, output, then, settings)
    answer = answer_for(chosen, accept)
    background_digest = ""
    if chosen.bg_image is not None:
        # Off the event loop: work proportional to the upload. Its header is checked with the photo's (job).
        background_digest = await anyio.to_thread.run_sync(_digest, chosen.bg_image)
    return Order(
        source="upload" if sub.image is not None else "image_url",
        pipeline=pipeline,
        resolution=resolution,
        output=output,
        options=chosen,
        answer=answer,
        price=price,
        fingerprint=fingerprint + (f"\n{background_digest}" if background_digest else ""),
        escalation=escalation,
    )


async def job(asked: Order, image: bytes, settings: Settings, admit: Admit | None = None) -> Job:
    """The order with its photo, whose header (and a background's) is checked (400/413) before any pixel
    is decoded: in a thread, inside `admit` (the memory admission: WorkerGate.admitted)."""
    check = functools.partial(_check_headers, image, asked.options.bg_image, settings)
    held = HEADER_CHECK_BYTES + len(image) + len(asked.options.bg_image or b"")
    async with admit(held) if admit is not None else contextlib.nullcontext():
        info, background_pixels = await anyio.to_thread.run_sync(check)
    # The model's measured cost for these pixels, plus what the options add (a background image's decode).
    pixels = info.width * info.height
    memory = asked.pipeline.spec.peak_bytes(pixels)
    if asked.escalation is not None:
        # One after the other: the larger peak, and the first's full-size mask held meanwhile.
        memory = max(memory, asked.escalation.then.spec.peak_bytes(pixels)) + pixels
    memory += background_pixels * BACKGROUND_PEAK_BYTES_PER_PIXEL
    return Job(order=asked, image=image, memory_bytes=memory)


def plain(
    pipeline: Pipeline,
    image: bytes,
    output: Output = "cutout",
    resolution: str | None = None,
    escalation: Escalation | None = None,
) -> Job:
    """A job with no option, price or fingerprint: the service's own path, for bench/ to time."""
    asked = Order(
        source="upload",
        pipeline=pipeline,
        resolution=resolution or pipeline.resolutions[0],
        output=output,
        options=options.Options(),
        answer="image",
        price=0,
        fingerprint="",
        escalation=escalation,
    )
    return Job(order=asked, image=image, memory_bytes=0)
