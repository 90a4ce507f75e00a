"""One model pipeline: pre-processing, inference (through its Engine), mask post-processing, the cut-out.

Everything here runs in a worker thread (numpy, Pillow and onnxruntime release
the GIL in their heavy loops). It works on numpy arrays end to end and touches
each full-resolution image as few times as possible: rembg's `remove()` goes
PIL -> numpy -> PIL several times per request; we do not.
"""

from __future__ import annotations

import numpy as np
from PIL import Image
from scipy.ndimage import label, uniform_filter

from app.imaging import codec
from app.inference import confidence
from app.inference.cancel import checkpoint
from app.inference.engine import Engine
from app.inference.foreground import estimate_foreground, estimate_foreground_fast
from app.inference.resize import MODEL_INPUT_REDUCING_GAP, resize
from app.specs import ModelSpec, resolution_side

# Fast guided filter (He & Sun 2015): coefficients are solved at a working
# resolution a little above the model's, then applied to the full-size image,
# so edges snap to the photo's edges at a cost linear in the output size.
# Radius and eps chosen by bench/quality.py (r=2..8, eps=1e-4..1e-1 measured).
GUIDED_WORK_SIDE = 640
GUIDED_RADIUS = 2
GUIDED_EPS = 1e-3


def _normalised(pred: np.ndarray) -> np.ndarray:
    lo, hi = float(pred.min()), float(pred.max())
    return (pred - lo) / (hi - lo) if hi - lo >= 1e-6 else np.zeros_like(pred)


# A region of the mask (connected above UNDECIDED_FLOOR) in which no pixel reaches UNDECIDED_CORE is
# a half-transparent ghost of a second subject (falcon kept the woman behind the car in car-1.jpg at
# 20-40 % alpha): neither network decided it is subject, so it is left out, as ghost leaves it.
# car-1.jpg against its BiRefNet cut-out: alpha error 0.0123 -> 0.0043 (the composite set has no
# such ghost: unchanged there).
UNDECIDED_FLOOR = 0.1
UNDECIDED_CORE = 0.8


def drop_undecided(pred: np.ndarray) -> np.ndarray:
    regions, count = label(pred > UNDECIDED_FLOOR)
    if count == 0:
        return pred
    decided = np.bincount(regions[pred >= UNDECIDED_CORE], minlength=count + 1) > 0
    drop = ~decided
    drop[0] = False  # outside every region: left as it is
    if not drop.any():
        return pred
    return np.where(drop[regions], np.float32(0.0), pred).astype(pred.dtype, copy=False)


def _gray(rgb: np.ndarray) -> np.ndarray:
    return (rgb.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)) / 255.0


def guided_upsample(mask: np.ndarray, rgb: np.ndarray, contrast: float = 1.0) -> np.ndarray:
    """Upscale a low-resolution [0, 1] mask to the image's size along the image's edges.

    `contrast` steepens the result around 0.5, (q - 0.5) * contrast + 0.5; being
    linear, it is folded into the coefficients at the working resolution for free.
    """
    height, width = rgb.shape[:2]
    scale = min(1.0, GUIDED_WORK_SIDE / max(height, width))
    work = (max(1, round(width * scale)), max(1, round(height * scale)))
    guide = _gray(resize(rgb, work, Image.Resampling.BILINEAR))
    p = resize(mask.astype(np.float32), work, Image.Resampling.BILINEAR)

    size = 2 * GUIDED_RADIUS + 1
    mean_i = uniform_filter(guide, size)
    mean_p = uniform_filter(p, size)
    cov_ip = uniform_filter(guide * p, size) - mean_i * mean_p
    var_i = uniform_filter(guide * guide, size) - mean_i * mean_i
    a = cov_ip / (var_i + GUIDED_EPS)
    b = mean_p - a * mean_i
    a = uniform_filter(a, size) * contrast
    b = (uniform_filter(b, size) - 0.5) * contrast + 0.5

    if work != (width, height):
        a = resize(a, (width, height), Image.Resampling.BILINEAR)
        b = resize(b, (width, height), Image.Resampling.BILINEAR)
        guide = _gray(rgb)
    out: np.ndarray = a * guide
    out += b
    np.clip(out, 0.0, 1.0, out=out)
    out *= 255.0
    return out.astype(np.uint8)


class Pipeline:
    def __init__(
        self,
        name: str,
        spec: ModelSpec,
        engines: dict[str, Engine],
        union: Pipeline | None = None,
        natives: dict[str, Engine] | None = None,
    ) -> None:
        """`engines`: operating resolution ("1024x1024") -> the engine running the network at that size;
        the first is the default. `union`: the pipeline spec.union names, whose mask joins this one's.
        `natives`: where `engines` run INT8, the native engine of the same resolution, for the photos
        INT8 leaves undecided (spec.int8_recheck_below)."""
        self.name = name
        self.spec = spec
        self._engines = engines
        self._union = union
        self._natives = natives or {}
        self._mean = np.asarray(spec.mean, np.float32)
        self._inv_std = 1.0 / np.asarray(spec.std, np.float32)

    @property
    def resolutions(self) -> list[str]:
        """The operating resolutions this pipeline runs at, the default first."""
        return list(self._engines)

    def _infer(self, small: np.ndarray, engine: Engine) -> np.ndarray:
        x = small.astype(np.float32)
        if self.spec.scale == "image_max":
            # As rembg (divide by the image's own maximum), so ghost matches its masks.
            x *= 1.0 / max(float(x.max()), 1e-6)
        else:
            x *= 1.0 / 255.0
        x -= self._mean
        x *= self._inv_std
        batch = np.ascontiguousarray(x.transpose(2, 0, 1)[np.newaxis])
        pred: np.ndarray = engine.run(batch)[0, 0]
        return pred

    def _second_view_needed(self, crisp: float) -> bool:
        """`crisp`: the first mask's decisiveness."""
        below = self.spec.second_view_below
        return below is None or crisp < below

    @staticmethod
    def _crisp(pred: np.ndarray) -> float:
        return confidence.decisiveness(_normalised(pred))

    def predict(self, rgb: np.ndarray, resolution: str | None = None) -> np.ndarray:
        """The model's mask at the operating resolution, scaled to [0, 1]."""
        return self.predict_scored(rgb, resolution)[0]

    def predict_scored(self, rgb: np.ndarray, resolution: str | None = None) -> tuple[np.ndarray, float]:
        """The model's mask at the operating resolution, scaled to [0, 1], and its confidence
        (app/inference/confidence.py): from the two views it joins, where it has two."""
        resolution = resolution or self.resolutions[0]
        side = resolution_side(resolution)
        small = resize(rgb, (side, side), Image.Resampling.LANCZOS, MODEL_INPUT_REDUCING_GAP)
        engine = self._engines[resolution]
        pred = self._infer(small, engine)
        crisp = self._crisp(pred)  # decides the recheck and the second view: computed once
        native = self._natives.get(resolution)
        recheck_below = self.spec.int8_recheck_below.get(resolution)
        if native is not None and recheck_below is not None and crisp < recheck_below:
            checkpoint()
            engine = native
            pred = self._infer(small, engine)
            crisp = self._crisp(pred)
        views: tuple[np.ndarray, np.ndarray] | None = None
        if self.spec.mirror == "max" and self._second_view_needed(crisp):
            checkpoint()
            mirrored = self._infer(small[:, ::-1], engine)[:, ::-1]
            views = (_normalised(pred), _normalised(mirrored))
            pred = np.maximum(pred, mirrored)
            crisp = self._crisp(pred)
        pred = _normalised(pred)
        if self._union is not None and self._second_view_needed(crisp):
            checkpoint()
            other = self._union.predict(rgb).astype(np.float32)
            other = np.asarray(Image.fromarray(other).resize((side, side), Image.Resampling.BILINEAR))
            views = (pred, other)
            pred = np.maximum(pred, other)
        score = confidence.score(pred, *views) if views is not None else confidence.score(pred)
        if self.spec.undecided == "drop":
            # Scored before: the doubt was the model's, even where its answer now leaves it out.
            pred = drop_undecided(pred)
        if self.spec.black_point > 0.0:
            pred = np.clip((pred - self.spec.black_point) * (1.0 / (1.0 - self.spec.black_point)), 0.0, 1.0)
        return pred, score

    def mask(self, rgb: np.ndarray, resolution: str | None = None) -> np.ndarray:
        """Full-size uint8 mask (255 = subject)."""
        return self.mask_scored(rgb, resolution)[0]

    def mask_scored(self, rgb: np.ndarray, resolution: str | None = None) -> tuple[np.ndarray, float]:
        """Full-size uint8 mask (255 = subject) and its confidence."""
        pred, score = self.predict_scored(rgb, resolution)
        checkpoint()
        height, width = rgb.shape[:2]
        if self.spec.refine == "guided":
            return guided_upsample(pred, rgb, self.spec.edge_contrast), score
        if self.spec.edge_contrast != 1.0:
            pred = np.clip((pred - 0.5) * self.spec.edge_contrast + 0.5, 0.0, 1.0)
        return resize((pred * 255).astype(np.uint8), (width, height), Image.Resampling.LANCZOS), score

    def cutout(
        self, decoded: codec.Decoded, resolution: str | None = None, refine_foreground: bool | None = None
    ) -> np.ndarray:
        """Full-size RGBA cut-out with straight (not premultiplied) alpha, as PNG expects."""
        return self.cutout_scored(decoded, resolution, refine_foreground)[0]

    def cutout_scored(
        self, decoded: codec.Decoded, resolution: str | None = None, refine_foreground: bool | None = None
    ) -> tuple[np.ndarray, float]:
        """Full-size RGBA cut-out and its mask's confidence."""
        alpha, score = self.mask_scored(decoded.rgb, resolution)
        checkpoint()
        return self.compose(decoded, alpha, refine_foreground), score

    def compose(self, decoded: codec.Decoded, alpha: np.ndarray, refine_foreground: bool | None = None) -> np.ndarray:
        """The cut-out of `decoded` under this model's full-size mask `alpha` (its foreground colour step).
        refine_foreground (fal's): True, the full estimate on soft edges; False, none; None, the model's own."""
        if decoded.alpha is not None:
            # Pixels the upload already made transparent stay transparent.
            alpha = ((alpha.astype(np.uint16) * decoded.alpha + 127) // 255).astype(np.uint8)
        colour = decoded.rgb
        foreground = self.spec.foreground if refine_foreground is None else "estimate" if refine_foreground else ""
        if foreground == "estimate":
            colour = estimate_foreground(decoded.rgb, alpha)
        elif foreground == "estimate_fast":
            colour = estimate_foreground_fast(decoded.rgb, alpha)
        rgba = np.empty((*alpha.shape, 4), np.uint8)
        # Colour under fully transparent pixels is invisible; zeros there halve PNG size and encode time.
        # One multiply into the output (2.4x faster than stacking, then zeroing by a boolean index).
        np.multiply(colour, (alpha != 0)[..., np.newaxis], out=rgba[..., :3])
        rgba[..., 3] = alpha
        return rgba

    def warm(self) -> None:
        probe = np.zeros((self.spec.input_size, self.spec.input_size, 3), np.uint8)
        probe[8:-8, 8:-8] = 200
        for resolution in self.resolutions:
            self.cutout(codec.Decoded(rgb=probe, alpha=None), resolution)
