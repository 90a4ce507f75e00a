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

from app.errors import ApiError, invalid_image
from app.imaging import codec
from app.removal.options import DEFAULT_QUALITY, Options

# "The subject" for cropping: alpha above ~4%, so faint model noise does not stretch the box.
CROP_ALPHA_THRESHOLD = 10
# Shadow defaults, as shares of the image's longer side: a soft shadow falling down and a little right.
SHADOW_OFFSET_X_SHARE = 0.01
SHADOW_OFFSET_Y_SHARE = 0.02
SHADOW_BLUR_SHARE = 0.015
# WebP speed/size trade-off (0 fastest .. 6 smallest): chosen by bench/options.py.
WEBP_METHOD = 0
JPEG_BACKGROUND = (255, 255, 255, 255)
# Blurs wider than twice this radius run on a copy reduced by radius // BLUR_REDUCE_STEP.
BLUR_REDUCE_STEP = 4

# A bg_image's decode and its scaling to the cut-out, peak bytes per pixel of the background (PIL's
# 4-byte RGB, the decoded array, the cover crop): the memory admission adds it to the model's
# estimate. Measured by `bench/memory.py --background`: 10.0 B/px from 2000^2 to 6000^2, JPEG or PNG.
BACKGROUND_PEAK_BYTES_PER_PIXEL = 10


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


def add_shadow(rgba: np.ndarray, options: Options) -> np.ndarray:
    """The subject over a soft black copy of its own alpha, shifted and blurred."""
    height, width = rgba.shape[:2]
    side = max(height, width)
    dx = options.shadow_offset_x if options.shadow_offset_x is not None else round(side * SHADOW_OFFSET_X_SHARE)
    dy = options.shadow_offset_y if options.shadow_offset_y is not None else round(side * SHADOW_OFFSET_Y_SHARE)
    blur = options.shadow_blur if options.shadow_blur is not None else side * SHADOW_BLUR_SHARE
    alpha = rgba[..., 3]
    shifted = np.zeros_like(alpha)
    # Clamped at 0: an offset past the image's side leaves nothing to shift (a negative end would wrap).
    src = alpha[max(0, -dy) : max(0, height - dy), max(0, -dx) : max(0, width - dx)]
    shifted[max(0, dy) : max(0, dy) + src.shape[0], max(0, dx) : max(0, dx) + src.shape[1]] = src
    opacity = options.shadow_opacity
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


def _over_colour(rgba: np.ndarray, colour: tuple[int, int, int, int]) -> np.ndarray:
    size = (rgba.shape[1], rgba.shape[0])
    if colour[3] == 255:
        return _over(rgba, Image.new("RGB", size, colour[:3]))
    # A see-through colour: "over" with straight alpha, the result stays RGBA.
    return np.asarray(Image.alpha_composite(Image.new("RGBA", size, colour), Image.fromarray(rgba)))


def decode_background(data: bytes) -> np.ndarray:
    """A bg_image's pixels (RGB), or 400 invalid_image naming it."""
    try:
        return codec.decode(data).rgb
    except ApiError as err:
        raise invalid_image(f"bg_image: {err.message}") from None


def _background(rgba: np.ndarray, photo: np.ndarray, options: Options, background: np.ndarray | None) -> np.ndarray:
    if options.bg_color is not None:
        return _over_colour(rgba, options.bg_color)
    if options.bg_blur is not None:
        return _over(rgba, _gaussian(Image.fromarray(photo), options.bg_blur))
    if options.bg_image is not None:
        height, width = rgba.shape[:2]
        if background is None:
            background = decode_background(options.bg_image)
        return _over(rgba, _cover(background, width, height))
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
        return codec.encode_png(pixels, png_level, png_fast)
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


def finish_cutout(
    rgba: np.ndarray,
    photo: np.ndarray,
    options: Options,
    png_level: int,
    png_fast: bool,
    background: np.ndarray | None = None,
) -> Rendered:
    """rgba: the model's cut-out; photo: the decoded input (for bg_blur), same size; background:
    options.bg_image decoded (decode_background), when the caller decoded it first."""
    mask = rgba[..., 3]
    if options.shadow:
        rgba = add_shadow(rgba, options)
    box = subject_box(rgba[..., 3], options) if options.crop_to_bbox else None
    rgba, photo, mask = _crop(box, rgba, photo, mask)
    pixels = _downscale(_background(rgba, photo, options, background), options.max_side)
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
