"""Planning a removal: from a Submission to a typed, frozen Job, before anything is reserved.

Everything that can refuse a request before credits are reserved happens here, in three steps:
`order` checks what is asked (the operating resolution, the options, the answer's shape, a
background image's header) and prices it; `fetch_photo` brings an image_url's bytes; `job` checks
the photo's header and estimates the memory. The Job is all the rest of the request needs:
what to run (app/removal/render.py), what to charge, the Idempotency-Key fingerprint, the
memory estimate and the answer's shape (app/removal/respond.py).
"""

from __future__ import annotations

import functools
import hashlib
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
from app.removal.submission import Submission
from app.settings import Settings

Output = pricing.Output
Answer = Literal["image", "json"]
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
    background_pixels: int  # of a bg_image, for the memory estimate
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


def wants_json(accept: str) -> bool:
    return "application/json" in {part.split(";")[0].strip().lower() for part in accept.split(",")}


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
    if value is None:
        return pipeline.resolutions[0]
    if value.strip().lower() in pipeline.resolutions:
        return value.strip().lower()
    accepted = ", ".join(pipeline.resolutions)
    raise invalid_parameter(
        f"Model {pipeline.name!r} cannot run at operating_resolution {value[:40]!r}; it accepts: {accepted}."
    )


def _answer(chosen: options.Options, accept: str) -> Answer:
    json_answer = chosen.sync_mode if chosen.sync_mode is not None else wants_json(accept)
    if chosen.output_mask and not json_answer:
        raise invalid_parameter(
            "output_mask returns the mask inside a JSON answer: add sync_mode=true (or Accept: application/json)."
        )
    return "json" if json_answer else "image"


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


async def fetch_photo(sub: Submission, settings: Settings) -> bytes:
    """The photo at the submission's image_url, or the 400 that says why not."""
    if sub.image_url is None:
        raise invalid_image("No image: send an image or an image_url.")  # a Submission has one or the other
    if not settings.fetch_enabled:
        raise fetch.forbidden("This server does not fetch image URLs; upload the image instead.")
    return await fetch.fetch_image(
        sub.image_url,
        allow=parse_networks(settings.fetch_allow),
        max_bytes=settings.max_body_bytes,
        connect_timeout_s=settings.fetch_connect_timeout_s,
        total_timeout_s=settings.fetch_timeout_s,
    )


def _priced_options(sub: Submission, chosen: options.Options) -> set[str]:
    used = {
        "image_url": sub.image_url is not None,
        "bg_blur": chosen.finish.bg_blur is not None,
        "bg_image": chosen.bg_image is not None,
        "shadow": chosen.finish.shadow,
    }
    return {name for name, on in used.items() if on}


async def order(
    sub: Submission, pipeline: Pipeline, output: Output, accept: str, settings: Settings, then: Pipeline | None = None
) -> Order:
    """What the submission asks of `pipeline` (model=auto: escalating to `then`), or the 4xx that refuses it."""
    if then is not None and sub.operating_resolution is not None:
        raise invalid_parameter(
            "model=auto runs each model at its own operating resolution: leave operating_resolution out."
        )
    resolution = _operating_resolution(pipeline, sub.operating_resolution)
    chosen = options.parse(sub.fields, sub.bg_image, mask=output == "mask")
    fingerprint = chosen.fingerprint()
    used = _priced_options(sub, chosen)
    price = pricing.cost(settings, pipeline.spec, resolution, output, used)
    escalation = None
    if then is not None:
        assert settings.auto is not None
        then_price = pricing.cost(settings, then.spec, then.resolutions[0], output, used)
        escalation = Escalation(then, settings.auto.below, price, then_price)
        price = max(price, then_price)
    answer = _answer(chosen, accept)
    background_digest, background_pixels = "", 0
    if chosen.bg_image is not None:
        # Off the event loop: work proportional to the upload (header walks, hashing).
        background_digest, background_pixels = await anyio.to_thread.run_sync(
            _probe_background, chosen.bg_image, settings
        )
    return Order(
        source="upload" if sub.image is not None else "image_url",
        pipeline=pipeline,
        resolution=resolution,
        output=output,
        options=chosen,
        answer=answer,
        price=price,
        fingerprint=fingerprint + (f"\n{background_digest}" if background_digest else ""),
        background_pixels=background_pixels,
        escalation=escalation,
    )


async def job(asked: Order, image: bytes, settings: Settings) -> Job:
    """The order with its photo, whose header is checked (400/413) before any pixel is decoded."""
    probe = functools.partial(codec.probe, image, max_pixels=settings.max_pixels, max_side=settings.max_side)
    info = await anyio.to_thread.run_sync(probe)
    # The model's measured cost for these pixels, plus what the options add (a background image's decode).
    pixels = info.width * info.height
    memory = asked.pipeline.spec.peak_bytes(pixels)
    if asked.escalation is not None:
        # One after the other: the larger peak, and the first's full-size mask held meanwhile.
        memory = max(memory, asked.escalation.then.spec.peak_bytes(pixels)) + pixels
    memory += asked.background_pixels * BACKGROUND_PEAK_BYTES_PER_PIXEL
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
        background_pixels=0,
        escalation=escalation,
    )
    return Job(order=asked, image=image, memory_bytes=0)
