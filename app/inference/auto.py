"""`model=auto`: the first model's mask; when its confidence is below the threshold, the second
model's answer instead (config/models.toml [auto]). Model-level only: pricing and headers are the
request's business."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from app.imaging import codec
from app.inference.cancel import checkpoint
from app.inference.pipeline import Pipeline


@dataclass(frozen=True)
class Escalation:
    pixels: np.ndarray  # the RGBA cut-out or the uint8 mask
    confidence: float  # of the answer given (the second model's when it escalated)
    model: str  # the model whose answer it is
    escalated: bool
    first_confidence: float  # the first model's, which decided


def run(
    first: Pipeline,
    then: Pipeline,
    below: float,
    decoded: codec.Decoded,
    cutout: bool,
    refine_foreground: bool | None = None,
) -> Escalation:
    alpha, score = first.mask_scored(decoded.rgb)
    checkpoint()
    if score >= below:
        pixels = first.compose(decoded, alpha, refine_foreground) if cutout else alpha
        return Escalation(pixels, score, first.name, False, score)
    if cutout:
        pixels, second = then.cutout_scored(decoded, refine_foreground=refine_foreground)
    else:
        pixels, second = then.mask_scored(decoded.rgb)
    return Escalation(pixels, second, then.name, True, score)
