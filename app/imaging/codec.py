"""Image I/O: probe (header only), decode (oriented, 8-bit sRGB + alpha), encode (PNG, WebP, JPEG).

Probing reads the header, never the pixels, so a decompression bomb is refused before it
costs memory; it runs in a thread (never on the event loop) after image_structure has bounded
how much header there is to walk.
"""

from __future__ import annotations

import functools
import io
import zlib
from dataclasses import dataclass
from typing import Literal

import fpng
import numpy as np
import pillow_heif
from PIL import Image, ImageCms, ImageOps

from app.errors import ApiError, invalid_image
from app.imaging.structure import check_structure

pillow_heif.register_heif_opener()

# What clients send. Everything else Pillow could open (EPS runs Ghostscript,
# PSD, ICO, ...) is refused: less parser surface for hostile files. (Multi-picture
# JPEGs from cameras, "MPO", are opened by the JPEG entry.)
ACCEPTED_FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF", "HEIF", "AVIF")
ACCEPTED_NAMES = "JPEG, PNG, WebP, GIF, BMP, TIFF, HEIC/HEIF or AVIF"

# Pillow's decoders written in Python, a few interpreter steps per pixel: BMP's RLE8/RLE4 (refused
# first by imaging.structure, with a clear message), and BLP, DDS, FITS, MSP, PPM, QOI, SGI 16-bit and
# XPM, formats we do not accept. Switched off, so that no file can reach one.
Image.init()
Image.DECODERS.clear()

# Our own limits (probe) are the real gate; Pillow's bomb check would only
# warn or raise a different error after the fact.
Image.MAX_IMAGE_PIXELS = None

SRGB_PROFILE = ImageCms.createProfile("sRGB")

# What a result can be written as.
Format = Literal["png", "webp", "jpeg"]
FORMATS: tuple[Format, ...] = ("png", "webp", "jpeg")
CONTENT_TYPES: dict[Format, str] = {"png": "image/png", "webp": "image/webp", "jpeg": "image/jpeg"}
# Lossy encoders' default quality; lossless WebP ignores it.
DEFAULT_QUALITY = 90
# WebP speed/size trade-off (0 fastest .. 6 smallest): chosen by bench/options.py.
WEBP_METHOD = 0

_SIXTEEN_BIT_MODES = {"I;16", "I;16L", "I;16B", "I;16N"}
_WIDE_GRAY_MODES = _SIXTEEN_BIT_MODES | {"I", "F"}


@dataclass(frozen=True)
class ImageInfo:
    width: int  # as stored; EXIF orientation may swap them, which no limit cares about
    height: int


@dataclass
class Decoded:
    rgb: np.ndarray  # H x W x 3 uint8, upright, sRGB
    alpha: np.ndarray | None  # H x W uint8 when the upload had transparency


def image_too_large(message: str) -> ApiError:
    return ApiError("image_too_large", message)


def _open(data: bytes) -> Image.Image:
    if not data:
        raise invalid_image(f"The image file is empty. Send a {ACCEPTED_NAMES} file.")
    try:
        return Image.open(io.BytesIO(data), formats=ACCEPTED_FORMATS)
    except Exception:
        raise invalid_image(f"The file is not an image we can read. Send {ACCEPTED_NAMES}.") from None


def probe(data: bytes, *, max_pixels: int, max_side: int) -> ImageInfo:
    """Refuse (400/413) from the header alone, before any pixel is decoded: an unreadable or crafted
    file, no pixels, or a size over the limits (as stored: EXIF orientation only swaps the sides)."""
    check_structure(data)
    img = _open(data)
    width, height = img.size
    if width <= 0 or height <= 0:
        raise invalid_image("The image has no pixels.")
    if width > max_side or height > max_side:
        raise image_too_large(f"The image is {width}x{height} px; each side may be at most {max_side} px.")
    if width * height > max_pixels:
        raise image_too_large(
            f"The image is {width}x{height} = {width * height} pixels; at most {max_pixels} are accepted."
        )
    return ImageInfo(width=width, height=height)  # memory admission sizes the job from it


def _to_8bit(img: Image.Image) -> Image.Image:
    """16/32-bit grayscale (PNG, TIFF) to 8 bits by scaling: converting directly clips to white."""
    arr = np.array(img, dtype=np.float32)  # a copy of our own, scaled in place below
    if img.mode in _SIXTEEN_BIT_MODES:
        scale = 255.0 / 65535.0
    else:  # "I" / "F" have no fixed range: keep 8-bit-range data, scale anything wider by its peak
        peak = float(arr.max()) if arr.size else 0.0
        scale = 255.0 / peak if peak > 255.0 else 1.0
    # In place: one float copy of the image at a time (arr * scale + 0.5, then clip, held three: the
    # memory admission's 10 B per background pixel was 14 for a 16-bit background).
    np.multiply(arr, scale, out=arr)
    np.add(arr, 0.5, out=arr)
    np.clip(arr, 0, 255, out=arr)
    return Image.fromarray(arr.astype(np.uint8))


# Every 8-bit RGB colour on a 17-step grid (4913 colours): enough to tell sRGB from anything else.
_GRID_LEVELS = np.linspace(0, 255, 17).round().astype(np.uint8)
_COLOUR_GRID = np.stack(np.meshgrid(_GRID_LEVELS, _GRID_LEVELS, _GRID_LEVELS, indexing="ij"), -1).reshape(17, 289, 3)


def _is_srgb(icc: bytes) -> bool:
    """True when this profile is sRGB in all but name: converting moves no colour by more than one level.

    Most phone and camera JPEGs carry an sRGB profile, and applying it costs time per megapixel
    to change nothing (measured: docs/performance.md). sRGB profiles are 0.5-3 KB; only
    profiles up to 64 KB are considered, which also bounds what the cache holds.
    """
    return len(icc) <= 65536 and _is_srgb_profile(icc)


@functools.lru_cache(maxsize=64)  # decided once per distinct profile (~2 ms)
def _is_srgb_profile(icc: bytes) -> bool:
    try:
        src = ImageCms.ImageCmsProfile(io.BytesIO(icc))
        if src.profile.xcolor_space.strip() != "RGB":
            return False
        converted = ImageCms.profileToProfile(Image.fromarray(_COLOUR_GRID), src, SRGB_PROFILE, outputMode="RGB")
    except Exception:
        return False
    return int(np.abs(np.asarray(converted, np.int16) - _COLOUR_GRID).max()) <= 1


def _to_srgb(img: Image.Image, icc: bytes, mode: str) -> Image.Image:
    """Colour-manage into sRGB (CMYK, Display P3, Adobe RGB ...) so the subject keeps its colour."""
    try:
        src = ImageCms.ImageCmsProfile(io.BytesIO(icc))
        if img.mode not in ("RGB", "RGBA", "CMYK", "L"):
            img = img.convert(mode)
        converted = ImageCms.profileToProfile(img, src, SRGB_PROFILE, outputMode=mode)
        return converted if converted is not None else img.convert(mode)  # None only when converting in place
    except Exception:
        # A broken or mismatched profile is no reason to refuse the photo: plain conversion.
        return img.convert(mode)


def decode(data: bytes) -> Decoded:
    """Full decode, in a worker thread: first frame, EXIF orientation applied, 8-bit sRGB."""
    img = _open(data)
    header_size = sorted(img.size)
    try:
        img.seek(0)  # GIF, multi-page TIFF, HEIC sequences: the first frame
        img.load()
        icc = img.info.get("icc_profile")
        img = ImageOps.exif_transpose(img)
        if img.mode in _WIDE_GRAY_MODES:
            img = _to_8bit(img)
        mode = "RGBA" if img.has_transparency_data else "RGB"
        img = _to_srgb(img, icc, mode) if icc and not _is_srgb(icc) else img.convert(mode)
        if img.mode != mode:  # lcms may answer in another mode for odd profiles
            img = img.convert(mode)
        pixels = np.asarray(img)
    except Exception:
        raise invalid_image("The image is truncated or corrupt and cannot be decoded.") from None
    if sorted(pixels.shape[:2]) != header_size:
        # The limits and the memory admission were sized from the header (a crafted HEIF clean
        # aperture can make them disagree): pixels of another size are not the image we admitted.
        raise invalid_image("The image's pixels do not match the size its header states.")
    if mode == "RGBA":
        return Decoded(rgb=np.ascontiguousarray(pixels[..., :3]), alpha=np.ascontiguousarray(pixels[..., 3]))
    return Decoded(rgb=pixels, alpha=None)


def encode_png(pixels: np.ndarray, compress_level: int, fast: bool = False) -> bytes:
    """Encode an H x W (L) or H x W x 4 (RGBA) uint8 array.

    fast: colour images go through fpng, much faster than Pillow for somewhat larger files
    (bench/png.py; the figures: docs/performance.md). fpng writes 24/32-bit pixels only, so grey masks always take Pillow.
    """
    if fast and pixels.ndim == 3:
        png: bytes = fpng.from_ndarray(pixels)
        return png
    buf = io.BytesIO()
    # Z_RLE suits PNG's filtered rows: faster than the default strategy at level 1 and smaller.
    # zlib's RLE ignores the level, so higher levels take the default strategy (smaller, slower).
    strategy = zlib.Z_RLE if compress_level <= 1 else zlib.Z_DEFAULT_STRATEGY
    Image.fromarray(pixels).save(buf, "PNG", compress_level=compress_level, compress_type=strategy)
    return buf.getvalue()


def encode(pixels: np.ndarray, fmt: Format, quality: int | None, png_level: int, png_fast: bool) -> bytes:
    """pixels in `fmt`; quality: None is lossless WebP, and JPEG at DEFAULT_QUALITY (PNG takes none)."""
    if fmt == "png":
        return encode_png(pixels, png_level, png_fast)
    buf = io.BytesIO()
    img = Image.fromarray(pixels)
    if fmt == "jpeg":
        img.save(buf, "JPEG", quality=quality or DEFAULT_QUALITY)
    elif quality is None:
        img.save(buf, "WEBP", lossless=True, quality=0, method=WEBP_METHOD)
    else:
        img.save(buf, "WEBP", quality=quality, method=WEBP_METHOD)
    return buf.getvalue()
