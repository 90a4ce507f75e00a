"""Finishing a cut-out or mask as the client asked: shadow, crop, background, size. Arrays in, arrays out.

Runs in the worker thread after the model. The order is fixed and documented: shadow (under
the subject) -> crop to the box of what is visible (subject and shadow) plus the margin ->
background (colour, blurred photo or another image) -> downscale to max_side. Encoding is
app/imaging/codec.py's. Pixel values given by the client (margin, blur, shadow offsets) are
in the input photo's pixels.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageFilter

# "The subject" for cropping: alpha above ~4%, so faint model noise does not stretch the box.
CROP_ALPHA_THRESHOLD = 10
# Shadow defaults, as shares of the image's longer side: a soft shadow falling down and a little right.
SHADOW_OFFSET_X_SHARE = 0.01
SHADOW_OFFSET_Y_SHARE = 0.02
SHADOW_BLUR_SHARE = 0.015
# What an opaque format (JPEG) shows under transparent pixels when no background is asked for.
OPAQUE_BACKGROUND = (255, 255, 255, 255)
# Blurs wider than twice this radius run on a copy reduced by radius // BLUR_REDUCE_STEP.
BLUR_REDUCE_STEP = 4

# A bg_image's decode and its scaling to the cut-out, peak bytes per pixel of the background (PIL's
# 4-byte RGB, the decoded array, the cover crop): the memory admission adds it to the model's
# estimate. Measured by `bench/memory.py --background`: 10.0 B/px from 2000^2 to 6000^2, JPEG or PNG.
BACKGROUND_PEAK_BYTES_PER_PIXEL = 10

Colour = tuple[int, int, int, int]
Box = tuple[int, int, int, int]


@dataclass(frozen=True)
class Finish:
    """What the picture gets after the model; the defaults leave it as the model made it."""

    crop_to_bbox: bool = False
    crop_margin: float = 0.0  # pixels, or percent of the subject's box when margin_percent
    margin_percent: bool = False
    bg_color: Colour | None = None
    bg_blur: float | None = None
    shadow: bool = False
    shadow_offset_x: int | None = None  # None: a share of the image's longer side
    shadow_offset_y: int | None = None
    shadow_blur: float | None = None
    shadow_opacity: float = 0.5
    max_side: int | None = None


@dataclass(frozen=True)
class Composed:
    pixels: np.ndarray  # RGBA, RGB (over an opaque background) or L (a mask)
    mask: np.ndarray | None = None  # the subject's alpha, cropped and scaled as pixels, when asked for
    crop: Box | None = None  # after a crop: (left, top, right, bottom) of what was kept, in the input's pixels


def subject_box(alpha: np.ndarray, finish: Finish) -> Box | None:
    """(left, top, right, bottom) of the visible part plus the margin, clamped; None when nothing is visible."""
    rows = np.flatnonzero((alpha > CROP_ALPHA_THRESHOLD).any(axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero((alpha[rows[0] : rows[-1] + 1] > CROP_ALPHA_THRESHOLD).any(axis=0))
    left, top, right, bottom = int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1
    if finish.margin_percent:
        pad_x = round((right - left) * finish.crop_margin / 100)
        pad_y = round((bottom - top) * finish.crop_margin / 100)
    else:
        pad_x = pad_y = round(finish.crop_margin)
    height, width = alpha.shape
    return max(0, left - pad_x), max(0, top - pad_y), min(width, right + pad_x), min(height, bottom + pad_y)


def _gaussian(img: Image.Image, radius: float) -> Image.Image:
    """Gaussian blur; wide radii on a reduced copy: a box-reduced image blurred by radius/f and scaled
    back looks the same at ~1/f^2 of the work (docs/performance.md, Output options)."""
    if radius <= 0:
        return img
    factor = int(radius // BLUR_REDUCE_STEP)
    if factor < 2 or min(img.size) < 4 * factor:
        return img.filter(ImageFilter.GaussianBlur(radius))
    small = img.reduce(factor).filter(ImageFilter.GaussianBlur(radius / factor))
    return small.resize(img.size, Image.Resampling.BILINEAR)


def add_shadow(rgba: np.ndarray, finish: Finish) -> np.ndarray:
    """The subject over a soft black copy of its own alpha, shifted and blurred."""
    height, width = rgba.shape[:2]
    side = max(height, width)
    dx = finish.shadow_offset_x if finish.shadow_offset_x is not None else round(side * SHADOW_OFFSET_X_SHARE)
    dy = finish.shadow_offset_y if finish.shadow_offset_y is not None else round(side * SHADOW_OFFSET_Y_SHARE)
    blur = finish.shadow_blur if finish.shadow_blur is not None else side * SHADOW_BLUR_SHARE
    alpha = rgba[..., 3]
    shifted = np.zeros_like(alpha)
    # Clamped at 0: an offset past the image's side leaves nothing to shift (a negative end would wrap).
    src = alpha[max(0, -dy) : max(0, height - dy), max(0, -dx) : max(0, width - dx)]
    shifted[max(0, dy) : max(0, dy) + src.shape[0], max(0, dx) : max(0, dx) + src.shape[1]] = src
    opacity = finish.shadow_opacity
    shadow_alpha = _gaussian(Image.fromarray(shifted), blur).point(lambda v: round(v * opacity))
    shadow = Image.new("RGBA", (width, height), (0, 0, 0, 0))
    shadow.putalpha(shadow_alpha)
    # Porter-Duff "over" with straight alpha, in Pillow's C loop.
    return np.asarray(Image.alpha_composite(shadow, Image.fromarray(rgba)))


def _cover(image: np.ndarray, width: int, height: int) -> Image.Image:
    """Scale to cover width x height, keeping the aspect ratio, and cut the middle out."""
    src_h, src_w = image.shape[:2]
    scale = max(width / src_w, height / src_h)
    size = (max(width, round(src_w * scale)), max(height, round(src_h * scale)))
    scaled = Image.fromarray(image).resize(size, Image.Resampling.BILINEAR, reducing_gap=3.0)
    left, top = (size[0] - width) // 2, (size[1] - height) // 2
    return scaled.crop((left, top, left + width, top + height))


def _over(rgba: np.ndarray, background: Image.Image) -> np.ndarray:
    """Subject over an opaque RGB background: an RGB image. Pillow's masked paste rounds exactly as
    (fg * a + bg * (255 - a)) / 255, in one C loop instead of numpy's several passes."""
    subject = Image.fromarray(rgba)
    background.paste(subject, mask=subject.getchannel("A"))
    return np.asarray(background)


def _over_colour(rgba: np.ndarray, colour: Colour) -> np.ndarray:
    size = (rgba.shape[1], rgba.shape[0])
    if colour[3] == 255:
        return _over(rgba, Image.new("RGB", size, colour[:3]))
    # A see-through colour: "over" with straight alpha, the result stays RGBA.
    return np.asarray(Image.alpha_composite(Image.new("RGBA", size, colour), Image.fromarray(rgba)))


def _background(
    rgba: np.ndarray, photo: np.ndarray, finish: Finish, background: np.ndarray | None, opaque: bool
) -> np.ndarray:
    if finish.bg_color is not None:
        return _over_colour(rgba, finish.bg_color)
    if finish.bg_blur is not None:
        return _over(rgba, _gaussian(Image.fromarray(photo), finish.bg_blur))
    if background is not None:
        height, width = rgba.shape[:2]
        return _over(rgba, _cover(background, width, height))
    if opaque:
        return _over_colour(rgba, OPAQUE_BACKGROUND)
    return rgba


def _downscale(pixels: np.ndarray, max_side: int | None) -> np.ndarray:
    height, width = pixels.shape[:2]
    if max_side is None or max(height, width) <= max_side:
        return pixels  # never upscale
    scale = max_side / max(height, width)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    # Pillow resizes RGBA premultiplied, so transparent pixels do not bleed dark fringes.
    return np.asarray(Image.fromarray(pixels).resize(size, Image.Resampling.LANCZOS, reducing_gap=3.0))


def _crop(box: Box | None, *planes: np.ndarray) -> list[np.ndarray]:
    if box is None:
        return list(planes)
    left, top, right, bottom = box
    return [plane[top:bottom, left:right] for plane in planes]


def cutout(
    rgba: np.ndarray,
    photo: np.ndarray,
    finish: Finish,
    *,
    background: np.ndarray | None = None,
    opaque: bool = False,
    with_mask: bool = False,
) -> Composed:
    """rgba: the model's cut-out; photo: the decoded input (for bg_blur), same size; background: a decoded
    bg_image (RGB), scaled to cover; opaque: the format has no alpha (a white ground unless one is asked
    for); with_mask: the subject's alpha comes back too, cropped and scaled as the picture."""
    alpha = rgba[..., 3]
    if finish.shadow:
        rgba = add_shadow(rgba, finish)
    box = subject_box(rgba[..., 3], finish) if finish.crop_to_bbox else None
    rgba, photo, alpha = _crop(box, rgba, photo, alpha)
    pixels = _downscale(_background(rgba, photo, finish, background, opaque), finish.max_side)
    kept = _downscale(np.ascontiguousarray(alpha), finish.max_side) if with_mask else None
    return Composed(np.ascontiguousarray(pixels), None if kept is None else np.ascontiguousarray(kept), box)


def mask(alpha: np.ndarray, finish: Finish) -> Composed:
    """A mask cropped and scaled as `finish` says (its colour options do not apply)."""
    box = subject_box(alpha, finish) if finish.crop_to_bbox else None
    (alpha,) = _crop(box, alpha)
    return Composed(np.ascontiguousarray(_downscale(alpha, finish.max_side)), crop=box)
