"""The one render path, in a worker thread: decode -> the network's mask -> compose -> encode.

Each stage is a small step with a checkpoint() after it: a job whose client hung up (or
that ran out of time) stops at the next one (app/inference/cancel.py). With no option,
compose changes nothing and the bytes are the plain PNG's.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from app.errors import ApiError, invalid_image
from app.imaging import codec, compose
from app.inference import auto
from app.inference.cancel import checkpoint
from app.removal.job import Job, Order
from app.removal.options import Options


@dataclass(frozen=True)
class Finished:
    body: bytes
    width: int
    height: int
    mask: bytes | None = None  # the mask in the same format and geometry, when output_mask
    # After a crop: the kept rectangle (left, top, width, height) in the input photo's pixels, margin
    # included, so a client can place the result back on the photo (remove.bg's X-Foreground-* headers).
    foreground: tuple[int, int, int, int] | None = None


def _rectangle(box: compose.Box | None) -> tuple[int, int, int, int] | None:
    if box is None:
        return None
    left, top, right, bottom = box
    return left, top, right - left, bottom - top


@dataclass(frozen=True)
class Result:
    image: Finished
    content_type: str
    inference_s: float  # decode to encode, without the queue's wait
    confidence: float  # of the mask given, 0-1 (app/inference/confidence.py)
    model: str  # the model whose answer it is (model=auto: the first, or the one it escalated to)
    resolution: str  # the operating resolution that model ran at
    escalated: bool | None = None  # model=auto: whether it escalated; None for a named model


def _encoded(pixels: np.ndarray, chosen: Options, png_level: int, png_fast: bool) -> bytes:
    return codec.encode(pixels, chosen.output_format, chosen.quality, png_level, png_fast)


def decode_background(data: bytes) -> np.ndarray:
    """A bg_image's pixels (RGB), or 400 invalid_image naming it."""
    try:
        return codec.decode(data).rgb
    except ApiError as err:
        raise invalid_image(f"bg_image: {err.message}") from None


def finish_cutout(
    rgba: np.ndarray,
    photo: np.ndarray,
    chosen: Options,
    png_level: int,
    png_fast: bool,
    background: np.ndarray | None = None,
) -> Finished:
    """The model's cut-out composed and encoded as `chosen` says; photo: the decoded input, same size;
    background: chosen.bg_image decoded (decode_background), when the caller decoded it first."""
    if background is None and chosen.bg_image is not None:
        background = decode_background(chosen.bg_image)
    opaque = chosen.output_format == "jpeg"
    composed = compose.cutout(
        rgba, photo, chosen.finish, background=background, opaque=opaque, with_mask=chosen.output_mask
    )
    checkpoint()
    height, width = composed.pixels.shape[:2]
    mask = None if composed.mask is None else _encoded(composed.mask, chosen, png_level, False)
    body = _encoded(composed.pixels, chosen, png_level, png_fast)
    return Finished(body, width, height, mask, _rectangle(composed.crop))


def finish_mask(alpha: np.ndarray, chosen: Options, png_level: int) -> Finished:
    composed = compose.mask(alpha, chosen.finish)
    checkpoint()
    height, width = composed.pixels.shape[:2]
    return Finished(_encoded(composed.pixels, chosen, png_level, False), width, height, None, _rectangle(composed.crop))


def _network(asked: Order, decoded: codec.Decoded) -> tuple[np.ndarray, tuple[float, str, str, bool | None]]:
    """The model's mask (or cut-out) of the photo, and (confidence, model, resolution, escalated) of the
    answer: model=auto's escalation decides which model's it is."""
    refine = asked.options.refine_foreground
    if asked.escalation is not None:
        then = asked.escalation.then
        answer = auto.run(asked.pipeline, then, asked.escalation.below, decoded, asked.output == "cutout", refine)
        if answer.escalated:
            return answer.pixels, (answer.confidence, then.name, then.resolutions[0], True)
        return answer.pixels, (answer.confidence, asked.pipeline.name, asked.resolution, False)
    if asked.output == "mask":
        pixels, score = asked.pipeline.mask_scored(decoded.rgb, asked.resolution)
    else:
        pixels, score = asked.pipeline.cutout_scored(decoded, asked.resolution, refine)
    return pixels, (score, asked.pipeline.name, asked.resolution, None)


def render(job: Job, png_level: int, png_fast: bool) -> Result:
    """png_fast: colour PNGs through fpng (app/imaging/codec.py); masks always take Pillow."""
    asked = job.order
    started = time.perf_counter()
    # Every input is decoded before the model runs, the background first: a file that fails to decode is
    # refused (and refunded) for the cost of its decode, never after a whole inference.
    background = decode_background(asked.options.bg_image) if asked.options.bg_image is not None else None
    decoded = codec.decode(job.image)
    checkpoint()
    pixels, answered = _network(asked, decoded)
    checkpoint()
    if asked.output == "mask":
        finished = finish_mask(pixels, asked.options, png_level)
    else:
        finished = finish_cutout(pixels, decoded.rgb, asked.options, png_level, png_fast, background)
    content_type = codec.CONTENT_TYPES[asked.options.output_format]
    return Result(finished, content_type, time.perf_counter() - started, *answered)
