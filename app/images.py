"""Image I/O: probe (header only), decode (oriented, RGB + alpha), encode PNG.

Probing happens on the event loop and must stay cheap: it reads the header,
never the pixels, so a decompression bomb is refused before it costs memory.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
import pillow_heif
from PIL import Image, ImageCms, ImageOps

from app.errors import ApiError, invalid_image

pillow_heif.register_heif_opener()

# Our own limits (probe) are the real gate; this stays as Pillow's backstop.
Image.MAX_IMAGE_PIXELS = None

# EXIF orientations 5-8 swap width and height when applied.
_TRANSPOSING_ORIENTATIONS = {5, 6, 7, 8}

SRGB_PROFILE = ImageCms.createProfile("sRGB")


@dataclass(frozen=True)
class ImageInfo:
    format: str
    width: int  # displayed size, after EXIF orientation
    height: int


@dataclass
class Decoded:
    rgb: np.ndarray  # H x W x 3 uint8, upright, sRGB
    alpha: np.ndarray | None  # H x W uint8 when the upload had transparency


def image_too_large(message: str) -> ApiError:
    return ApiError(413, "image_too_large", message)


def _open(data: bytes) -> Image.Image:
    if not data:
        raise invalid_image("The image file is empty.")
    try:
        return Image.open(io.BytesIO(data))
    except Exception:
        raise invalid_image(
            "The file is not an image we can read. Send JPEG, PNG, WebP, GIF, BMP, TIFF or HEIC."
        ) from None


def _orientation(img: Image.Image) -> int:
    try:
        return int(img.getexif().get(0x0112, 1))
    except Exception:
        return 1


def probe(data: bytes, *, max_pixels: int, max_side: int) -> ImageInfo:
    img = _open(data)
    width, height = img.size
    if width <= 0 or height <= 0:
        raise invalid_image("The image has no pixels.")
    if width > max_side or height > max_side:
        raise image_too_large(f"The image is {width}x{height}; the longest side may be at most {max_side} px.")
    if width * height > max_pixels:
        raise image_too_large(
            f"The image has {width * height} pixels; at most {max_pixels} are accepted."
        )
    if _orientation(img) in _TRANSPOSING_ORIENTATIONS:
        width, height = height, width
    return ImageInfo(format=img.format or "unknown", width=width, height=height)


def _to_srgb(img: Image.Image) -> Image.Image:
    """Colour-manage into sRGB when the file carries an ICC profile (CMYK, Display P3...)."""
    icc = img.info.get("icc_profile")
    if not icc:
        return img
    try:
        src = ImageCms.ImageCmsProfile(io.BytesIO(icc))
        out_mode = "RGBA" if img.mode in ("RGBA", "LA", "PA") else "RGB"
        if img.mode not in ("RGB", "RGBA", "CMYK", "L"):
            img = img.convert(out_mode)
        return ImageCms.profileToProfile(img, src, SRGB_PROFILE, outputMode=out_mode)
    except Exception:
        # A broken profile is no reason to refuse the photo: fall back to plain conversion.
        return img


def decode(data: bytes) -> Decoded:
    """Full decode, in a worker thread: apply EXIF orientation, bring to 8-bit sRGB."""
    img = _open(data)
    try:
        img.seek(0)  # GIF / multi-page TIFF / HEIC sequences: first frame
        img.load()
        img = ImageOps.exif_transpose(img)
        img = _to_srgb(img)
        has_alpha = img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info)
        if img.mode in ("I;16", "I;16B", "I;16L", "I"):
            # 16-bit grayscale: scale to 8 bits rather than clip.
            arr = np.asarray(img, dtype=np.float32)
            peak = max(float(arr.max()), 1.0)
            img = Image.fromarray((arr * (255.0 / (65535.0 if peak > 255 else 255.0))).clip(0, 255).astype(np.uint8))
        rgba = img.convert("RGBA") if has_alpha else None
        rgb = np.asarray(rgba.convert("RGB") if rgba is not None else img.convert("RGB"))
        alpha = np.asarray(rgba.getchannel("A")) if rgba is not None else None
    except ApiError:
        raise
    except Exception:
        raise invalid_image("The image is truncated or corrupt and cannot be decoded.") from None
    return Decoded(rgb=rgb, alpha=alpha)


def encode_png(pixels: np.ndarray, compress_level: int) -> bytes:
    """Encode an H x W (L) or H x W x 4 (RGBA) uint8 array."""
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "PNG", compress_level=compress_level)
    return buf.getvalue()
