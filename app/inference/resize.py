"""Resizing arrays through Pillow: the one resize the pipeline, the foreground estimate and the INT8
calibration (app/inference/quantization.py, which must feed the network what the pipeline does) share."""

from __future__ import annotations

import numpy as np
from PIL import Image

# Shrinking to the model's input first halves the image with box filters while it stays over 3x
# the target, then resamples with Lanczos: several times faster than Lanczos alone on a large photo,
# for nearly the same pixels (docs/performance.md).
MODEL_INPUT_REDUCING_GAP = 3.0


def resize(
    arr: np.ndarray, size: tuple[int, int], resample: Image.Resampling, reducing_gap: float | None = None
) -> np.ndarray:
    return np.asarray(Image.fromarray(arr).resize(size, resample, reducing_gap=reducing_gap))
