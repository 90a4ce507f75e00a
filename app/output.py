"""Finishing a cut-out or mask as the client asked: shadow, crop, background, size, format.

Runs in the worker thread after the model, on numpy arrays. The order is fixed
and documented: shadow (under the subject) -> crop to the box of what is
visible (subject and shadow) plus the margin -> background (colour, blurred
photo or another image) -> downscale to max_side -> encode. Pixel values given
by the client (margin, blur, shadow offsets) are in the input photo's pixels.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageFilter

from app import images
from app.options import DEFAULT_QUALITY, Options

# "The subject" for cropping: alpha above ~4%, so faint model noise does not stretch the box.
CROP_ALPHA_THRESHOLD = 10
# Shadow defaults, as shares of the image's longer side: a soft shadow falling down and a little right.
SHADOW_OFFSET_X_SHARE = 0.01
SHADOW_OFFSET_Y_SHARE = 0.02
SHADOW_BLUR_SHARE = 0.015
# WebP speed/size trade-off (0 fastest .. 6 smallest): chosen by bench/options.py.
WEBP_METHOD = 0
JPEG_BACKGROUND = (255, 255, 255, 255)


@dataclass(frozen=True)
class Rendered:
    body: bytes
    content_type: str
    width: int
    height: int
    mask: bytes | None = None  # the mask in the same format and geometry, when output_mask


def subject_box(alpha: np.ndarray, options: Options) -> tuple[int, int, int, int] | None:
    """(left, top, right, bottom) of the visible part plus the margin, clamped; None when nothing is visible."""
    rows = np.flatnonzero((alpha > CROP_ALPHA_THRESHOLD).any(axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero((alpha[rows[0] : rows[-1] + 1] > CROP_ALPHA_THRESHOLD).any(axis=0))
    left, top, right, bottom = int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1
    if options.margin_percent:
        pad_x = round((right - left) * options.crop_margin / 100)
        pad_y = round((bottom - top) * options.crop_margin / 100)
    else:
        pad_x = pad_y = round(options.crop_margin)
    height, width = alpha.shape
    return max(0, left - pad_x), max(0, top - pad_y), min(width, right + pad_x), min(height, bottom + pad_y)


def _gaussian(plane: np.ndarray, radius: float) -> np.ndarray:
    if radius <= 0:
        return plane
    return np.asarray(Image.fromarray(plane).filter(ImageFilter.GaussianBlur(radius)))


def add_shadow(rgba: np.ndarray, options: Options) -> np.ndarray:
    """The subject over a soft black copy of its own alpha, shifted and blurred."""
    height, width = rgba.shape[:2]
    side = max(height, width)
    dx = options.shadow_offset_x if options.shadow_offset_x is not None else round(side * SHADOW_OFFSET_X_SHARE)
    dy = options.shadow_offset_y if options.shadow_offset_y is not None else round(side * SHADOW_OFFSET_Y_SHARE)
    blur = options.shadow_blur if options.shadow_blur is not None else side * SHADOW_BLUR_SHARE
    alpha = rgba[..., 3]
    shifted = np.zeros_like(alpha)
    src = alpha[max(0, -dy) : height - max(0, dy), max(0, -dx) : width - max(0, dx)]
    shifted[max(0, dy) : max(0, dy) + src.shape[0], max(0, dx) : max(0, dx) + src.shape[1]] = src
    shadow_a = _gaussian(shifted, blur).astype(np.float32) * (options.shadow_opacity / 255.0)
    # Subject (straight alpha) over a black layer of alpha shadow_a.
    a = alpha.astype(np.float32) / 255.0
    out_a = a + shadow_a * (1.0 - a)
    out = np.empty_like(rgba)
    with np.errstate(divide="ignore", invalid="ignore"):
        colour = rgba[..., :3].astype(np.float32) * (a / np.maximum(out_a, 1e-6))[..., np.newaxis]
    out[..., :3] = (colour + 0.5).clip(0, 255).astype(np.uint8)
    out[..., 3] = (out_a * 255.0 + 0.5).astype(np.uint8)
    return out


def _cover(image: np.ndarray, width: int, height: int) -> np.ndarray:
    """Scale to cover width x height, keeping the aspect ratio, and cut the middle out."""
    src_h, src_w = image.shape[:2]
    scale = max(width / src_w, height / src_h)
    size = (max(width, round(src_w * scale)), max(height, round(src_h * scale)))
    scaled = Image.fromarray(image).resize(size, Image.Resampling.BILINEAR, reducing_gap=3.0)
    left, top = (size[0] - width) // 2, (size[1] - height) // 2
    return np.asarray(scaled.crop((left, top, left + width, top + height)))


def _over_opaque(rgba: np.ndarray, background: np.ndarray) -> np.ndarray:
    """Subject over an opaque background (H x W x 3, or one colour): an RGB image."""
    a = rgba[..., 3:4].astype(np.uint16)
    blended = rgba[..., :3] * a + background * (255 - a) + 127
    return (blended // 255).astype(np.uint8)


def _over_colour(rgba: np.ndarray, colour: tuple[int, int, int, int]) -> np.ndarray:
    if colour[3] == 255:
        return _over_opaque(rgba, np.asarray(colour[:3], np.uint16))
    # A see-through colour: Porter-Duff "over" with straight alpha, the result stays RGBA.
    a = rgba[..., 3:4].astype(np.float32) / 255.0
    b = colour[3] / 255.0
    out_a = a + b * (1.0 - a)
    bg = np.asarray(colour[:3], np.float32) * b * (1.0 - a)
    with np.errstate(divide="ignore", invalid="ignore"):
        rgb = (rgba[..., :3] * a + bg) / np.maximum(out_a, 1e-6)
    out = np.empty_like(rgba)
    out[..., :3] = (rgb + 0.5).clip(0, 255).astype(np.uint8)
    out[..., 3] = (out_a[..., 0] * 255.0 + 0.5).astype(np.uint8)
    return out


def _background(rgba: np.ndarray, photo: np.ndarray, options: Options) -> np.ndarray:
    if options.bg_color is not None:
        return _over_colour(rgba, options.bg_color)
    if options.bg_blur is not None:
        return _over_opaque(rgba, _gaussian(photo, options.bg_blur))
    if options.bg_image is not None:
        height, width = rgba.shape[:2]
        return _over_opaque(rgba, _cover(images.decode(options.bg_image).rgb, width, height))
    if options.output_format == "jpeg":
        return _over_colour(rgba, JPEG_BACKGROUND)
    return rgba


def _downscale(pixels: np.ndarray, max_side: int | None) -> np.ndarray:
    height, width = pixels.shape[:2]
    if max_side is None or max(height, width) <= max_side:
        return pixels  # never upscale
    scale = max_side / max(height, width)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    # Pillow resizes RGBA premultiplied, so transparent pixels do not bleed dark fringes.
    return np.asarray(Image.fromarray(pixels).resize(size, Image.Resampling.LANCZOS, reducing_gap=3.0))


def encode(pixels: np.ndarray, options: Options, png_level: int, png_fast: bool) -> bytes:
    if options.output_format == "png":
        return images.encode_png(pixels, png_level, png_fast)
    buf = io.BytesIO()
    img = Image.fromarray(pixels)
    if options.output_format == "jpeg":
        img.save(buf, "JPEG", quality=options.quality or DEFAULT_QUALITY)
    elif options.quality is None:
        img.save(buf, "WEBP", lossless=True, quality=0, method=WEBP_METHOD)
    else:
        img.save(buf, "WEBP", quality=options.quality, method=WEBP_METHOD)
    return buf.getvalue()


def _crop(box: tuple[int, int, int, int] | None, *planes: np.ndarray) -> list[np.ndarray]:
    if box is None:
        return list(planes)
    left, top, right, bottom = box
    return [plane[top:bottom, left:right] for plane in planes]


def finish_cutout(rgba: np.ndarray, photo: np.ndarray, options: Options, png_level: int, png_fast: bool) -> Rendered:
    """rgba: the model's cut-out; photo: the decoded input (for bg_blur), same size."""
    mask = rgba[..., 3]
    if options.shadow:
        rgba = add_shadow(rgba, options)
    box = subject_box(rgba[..., 3], options) if options.crop_to_bbox else None
    rgba, photo, mask = _crop(box, rgba, photo, mask)
    pixels = _downscale(_background(rgba, photo, options), options.max_side)
    height, width = pixels.shape[:2]
    mask_bytes = None
    if options.output_mask:
        mask_bytes = encode(_downscale(np.ascontiguousarray(mask), options.max_side), options, png_level, False)
    body = encode(np.ascontiguousarray(pixels), options, png_level, png_fast)
    return Rendered(body, options.content_type, width, height, mask_bytes)


def finish_mask(mask: np.ndarray, options: Options, png_level: int) -> Rendered:
    box = subject_box(mask, options) if options.crop_to_bbox else None
    (mask,) = _crop(box, mask)
    pixels = np.ascontiguousarray(_downscale(mask, options.max_side))
    height, width = pixels.shape[:2]
    return Rendered(encode(pixels, options, png_level, False), options.content_type, width, height)
