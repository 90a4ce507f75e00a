"""The subject's own colour on soft edges: blur-fusion foreground estimation on arrays (numpy), in
row strips, stopping at a cancelled job's next strip (app/inference/cancel.py). Pipeline.compose
runs it where a model's `foreground` (or the request's refine_foreground) asks for it."""

from __future__ import annotations

import numpy as np
from PIL import Image
from scipy.ndimage import uniform_filter

from app.inference.cancel import checkpoint
from app.inference.resize import resize

# Blur-fusion foreground estimation (Forte & Pitie 2021, "Approximate fast foreground colour
# estimation"; what BiRefNet's and fal's refine_foreground do): two box-blur passes, pure numpy.
# It replaced pymatting's estimate_foreground_ml: same look on our photos, without numba's
# ~265 MB and its JIT compile at start-up.
BLUR_FUSION_RADII = (90, 6)
# Worked in row strips so a 12 MP photo needs tens of MB, not a GB of float32 planes. The halo
# covers both passes' reach, so every strip's own rows come out exactly as in one full-frame pass.
FOREGROUND_STRIP_ROWS = 512
FOREGROUND_HALO_ROWS = sum(r // 2 + 1 for r in BLUR_FUSION_RADII)


def _box(x: np.ndarray, size: int) -> np.ndarray:
    blurred: np.ndarray = uniform_filter(x, size=(size, size, 1) if x.ndim == 3 else size)
    return blurred


def _blur_fusion(
    image: np.ndarray, fg: np.ndarray, bg: np.ndarray, alpha: np.ndarray, radius: int
) -> tuple[np.ndarray, np.ndarray]:
    blurred_alpha = _box(alpha, radius)
    blurred_fg = _box(fg * alpha, radius) / (blurred_alpha + 1e-5)
    blurred_bg = _box(bg * (1.0 - alpha), radius) / ((1.0 - blurred_alpha) + 1e-5)
    fg = blurred_fg + alpha * (image - alpha * blurred_fg - (1.0 - alpha) * blurred_bg)
    return np.clip(fg, 0.0, 1.0, out=fg), blurred_bg


def _foreground_strip(rgb: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    image = rgb.astype(np.float32) / 255.0
    a = alpha.astype(np.float32)[..., np.newaxis] / 255.0
    fg, bg = image, image
    for radius in BLUR_FUSION_RADII:
        fg, bg = _blur_fusion(image, fg, bg, a, radius)
    return (fg * 255.0 + 0.5).astype(np.uint8)


def estimate_foreground(rgb: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """Recover the subject's own colour on soft edges (no halo of the old background).

    Only partly transparent pixels change: opaque ones keep the photo's colour, invisible ones don't matter.
    """
    soft = (alpha > 0) & (alpha < 255)
    out = rgb.copy()
    height = rgb.shape[0]
    for top in range(0, height, FOREGROUND_STRIP_ROWS):
        bottom = min(top + FOREGROUND_STRIP_ROWS, height)
        checkpoint()  # the longest stage: a cancelled job stops within one strip
        strip_soft = soft[top:bottom]
        if not strip_soft.any():
            continue
        lo, hi = max(0, top - FOREGROUND_HALO_ROWS), min(height, bottom + FOREGROUND_HALO_ROWS)
        fg = _foreground_strip(rgb[lo:hi], alpha[lo:hi])[top - lo : bottom - lo]
        out[top:bottom][strip_soft] = fg[strip_soft]
    return out


# The fast models' variant (foreground = "estimate_fast"): the same two passes on a copy
# FAST_FOREGROUND_SCALE times smaller (radii scaled alike; the blurred colours are smooth anyway),
# then the closing step of blur fusion at full resolution on the visibly soft pixels only (alpha
# FAST_FOREGROUND_MARGIN away from 0 and 255: a fifth of the soft ones on an upscaled mask), each
# reading the blurred subject and background colours of its cell. Measured by bench/quality.py
# --clean-colour --foreground (docs/models.md, "Clean edges on every model"): ghost's fringe
# colour error 4.94 -> 3.96 (the full pass: 3.67) at about 1.10x its time (the full pass: 1.38x).
FAST_FOREGROUND_SCALE = 8
FAST_FOREGROUND_MARGIN = 8


def estimate_foreground_fast(rgb: np.ndarray, alpha: np.ndarray, scale: int = FAST_FOREGROUND_SCALE) -> np.ndarray:
    """`estimate_foreground` at a fraction of its cost: the blurs run `scale` times smaller."""
    flat_alpha = alpha.ravel()
    index = np.flatnonzero((flat_alpha > FAST_FOREGROUND_MARGIN) & (flat_alpha < 255 - FAST_FOREGROUND_MARGIN))
    if index.size == 0:
        return rgb
    height, width = alpha.shape
    size = (max(1, -(-width // scale)), max(1, -(-height // scale)))
    image = resize(rgb, size, Image.Resampling.BOX).astype(np.float32) / 255.0
    a = resize(alpha, size, Image.Resampling.BOX).astype(np.float32)[..., np.newaxis] / 255.0
    fg, bg = image, image
    blurred_fg = blurred_bg = image
    for radius in BLUR_FUSION_RADII:
        radius = max(3, radius // scale)
        blurred_a = _box(a, radius)
        blurred_fg = _box(fg * a, radius) / (blurred_a + 1e-5)
        blurred_bg = _box(bg * (1.0 - a), radius) / ((1.0 - blurred_a) + 1e-5)
        fg = np.clip(blurred_fg + a * (image - a * blurred_fg - (1.0 - a) * blurred_bg), 0.0, 1.0)
        bg = blurred_bg
    checkpoint()
    ys, xs = np.divmod(index, width)
    cell = (ys // scale) * size[0] + xs // scale
    f = blurred_fg.reshape(-1, 3)[cell]
    b = blurred_bg.reshape(-1, 3)[cell]
    flat = rgb.reshape(-1, 3)
    t = flat_alpha[index].astype(np.float32)[:, np.newaxis] * (1.0 / 255.0)
    est = f * (1.0 - t * t) + t * (flat[index].astype(np.float32) * (1.0 / 255.0)) - t * (1.0 - t) * b
    out = rgb.copy()
    out.reshape(-1, 3)[index] = np.clip(est * 255.0 + 0.5, 0.0, 255.0).astype(np.uint8)
    return out
