"""The OpenAPI text of the rembg routes' output options, image_url and JSON bodies (app/openapi/document.py uses it).

Kept next to app/removal/options.py's names: a field added there is described here.
"""

from __future__ import annotations

import base64
import io
from typing import Any

from PIL import Image, ImageDraw

from app.imaging.compose import (
    SHADOW_BLUR_SHARE,
    SHADOW_OFFSET_X_SHARE,
    SHADOW_OFFSET_Y_SHARE,
)
from app.removal import options

JSON = dict[str, Any]

# A pattern, not an enum: client generators would make one enum class per flag and operation.
_BOOL_TEXT = {"type": "string", "pattern": f"^({'|'.join((*options.TRUE_WORDS, *options.FALSE_WORDS))})$"}
_DECIMAL = {"type": "string", "pattern": options.DECIMAL}
_INTEGER = {"type": "string", "pattern": options.INTEGER}
_SIGNED = {"type": "string", "pattern": options.SIGNED_INTEGER}

# name -> (schema for a form field, description). JSON bodies take the same names with native types.
# Shared by both routes' form and JSON bodies: one class in a generated client, not four.
COMPONENTS: dict[str, JSON] = {"OutputFormat": {"type": "string", "enum": list(options.FORMAT_NAMES)}}

_OPTIONS: dict[str, tuple[JSON, str]] = {
    "crop_to_bbox": (
        _BOOL_TEXT,
        "Crop to the subject's bounding box (alpha above ~4%; with `shadow`, the shadow too).",
    ),
    "crop_margin": (
        {"type": "string", "pattern": options.MARGIN, "examples": ["20", "20px", "10%"]},
        "Margin around the subject's box, in pixels or % of the box (clamped to the photo); implies `crop_to_bbox` "
        "(ignored with `crop_to_bbox=false`).",
    ),
    "output_format": (
        {"$ref": "#/components/schemas/OutputFormat", "default": "png"},
        "`png` (default); `webp`: lossless with alpha, lossy with `quality`; `jpeg`: no alpha, composited over "
        "`bg_color` (white by default).",
    ),
    "quality": (
        {**_INTEGER, "examples": ["80"]},
        f"1-100, for `jpeg` (default {options.DEFAULT_QUALITY}) or lossy `webp`; ignored for `png`.",
    ),
    "bg_color": (
        {"type": "string", "examples": ["#FFFFFF", "#00000080", "white", "tomato"]},
        "Composite over this colour: `#RRGGBB`, `#RRGGBBAA`, `#RGB` or a CSS colour name. Opaque: an RGB image.",
    ),
    "bg_blur": (
        {**_DECIMAL, "examples": ["12"]},
        f"Keep the photo's own background, Gaussian-blurred with this radius (0.5-{options.MAX_BLUR_PX} px), "
        "behind the sharp subject. Opaque.",
    ),
    "shadow": (_BOOL_TEXT, "A soft drop shadow under the subject, drawn before cropping and background."),
    "shadow_offset_x": (
        _SIGNED,
        f"Implies `shadow`: shift right in px (default {SHADOW_OFFSET_X_SHARE:.0%} of the longer side; negative: left).",
    ),
    "shadow_offset_y": (
        _SIGNED,
        f"Implies `shadow`: shift down in px (default {SHADOW_OFFSET_Y_SHARE:.0%} of the longer side; negative: up).",
    ),
    "shadow_blur": (
        _DECIMAL,
        f"Implies `shadow`: blur radius in px (default {SHADOW_BLUR_SHARE:.1%} of the longer side).",
    ),
    "shadow_opacity": (
        _DECIMAL,
        "Implies `shadow`: its opacity, 0-1 (default 0.5). Shadow settings are ignored with `shadow=false`.",
    ),
    "max_side": (
        {**_INTEGER, "examples": ["1024"]},
        "Downscale the finished result so its longer side is at most this; never upscales.",
    ),
    "sync_mode": (_BOOL_TEXT, "`true`: answer JSON with the image as a data URI (as does `Accept: application/json`)."),
    "output_mask": (_BOOL_TEXT, "With a JSON answer: add the mask (same crop, size and format) as `mask`."),
}
_NATIVE: dict[str, JSON] = {
    "crop_to_bbox": {"type": "boolean"},
    "shadow": {"type": "boolean"},
    "sync_mode": {"type": "boolean"},
    "output_mask": {"type": "boolean"},
    "quality": {"type": "integer", "minimum": 1, "maximum": 100},
    "bg_blur": {"type": "number", "minimum": 0.5, "maximum": options.MAX_BLUR_PX},
    "shadow_offset_x": {
        "type": "integer",
        "minimum": -options.MAX_SHADOW_OFFSET_PX,
        "maximum": options.MAX_SHADOW_OFFSET_PX,
    },
    "shadow_offset_y": {
        "type": "integer",
        "minimum": -options.MAX_SHADOW_OFFSET_PX,
        "maximum": options.MAX_SHADOW_OFFSET_PX,
    },
    "shadow_blur": {"type": "number", "minimum": 0, "maximum": options.MAX_BLUR_PX},
    "shadow_opacity": {"type": "number", "minimum": 0, "maximum": 1},
    "max_side": {"type": "integer", "minimum": 1, "maximum": 100000},
    "crop_margin": {"type": "number", "minimum": 0, "maximum": 10000},
}
_MASK_FIELDS = options.GEOMETRY_FIELDS | {"sync_mode"}
_IMAGE_URL = (
    "Fetch the photo from this http(s) URL instead (public addresses only; at most 3 redirects; "
    "same size limit as uploads). Failures: 400 `image_url_forbidden`, `image_url_unreachable`, `image_url_too_large`."
)


IMAGE_URL_IN_FORM = (
    " Or leave this part out and send a text field `image_url` (up to 1 KB): the photo is fetched from there, "
    "as with `image_url` in a JSON body."
)


def form_properties(mask: bool) -> JSON:
    """Multipart fields beyond `image` and `model` (`image_url` is told in `image`'s description:
    a form carries one of the two, and this schema lists the upload)."""
    names = [name for name in _OPTIONS if not mask or name in _MASK_FIELDS]
    props: JSON = {}
    if not mask:
        props["bg_image"] = {
            "type": "string",
            "format": "binary",
            "description": "A second file part: the subject composited over this image, scaled to cover.",
        }
    for name in names:
        schema, description = _OPTIONS[name]
        props[name] = {**schema, "description": description}
    return props


def example_data_uri() -> str:
    """A 48x36 PNG with a dark disc on a light ground: a real photo for Swagger's "Try it out" and the examples phase."""
    img = Image.new("RGB", (48, 36), (235, 235, 228))
    ImageDraw.Draw(img).ellipse((12, 6, 36, 30), fill=(150, 30, 40))
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def json_example(mask: bool) -> JSON:
    example: JSON = {"image_data_uri": example_data_uri(), "crop_to_bbox": True, "sync_mode": True}
    return example if mask else {**example, "bg_color": "#FFFFFF", "output_format": "webp"}


def json_request(models: list[str], default_model: str, mask: bool) -> JSON:
    """fal's shape: the photo by URL or data URI, the options as JSON values."""
    props: JSON = {
        "image_url": {"type": "string", "maxLength": 8192, "description": _IMAGE_URL},
        "image_data_uri": {
            "type": "string",
            "pattern": "^data:",
            "description": "The photo inline: `data:image/jpeg;base64,…`.",
            "examples": [example_data_uri()],
        },
        "model": {"type": "string", "enum": models, "default": default_model},
    }
    if not mask:
        props["bg_image_data_uri"] = {"type": "string", "description": "A background image inline, as `bg_image`."}
    for name, (schema, description) in _OPTIONS.items():
        if mask and name not in _MASK_FIELDS:
            continue
        # JSON takes the native type or the form's text.
        native = _NATIVE.get(name)
        props[name] = (
            {"anyOf": [native, schema], "description": description}
            if native
            else {**schema, "description": description}
        )
    return {
        "type": "object",
        "additionalProperties": False,
        "description": "Send exactly one of `image_url` and `image_data_uri`.",
        "properties": props,
    }


def _file_schema() -> JSON:
    return {
        "type": "object",
        "required": ["url", "content_type", "file_name", "file_size", "width", "height"],
        "properties": {
            "url": {"type": "string", "pattern": "^data:image/", "description": "The image as a base64 data URI."},
            "content_type": {"type": "string", "enum": sorted(options.CONTENT_TYPES.values())},
            "file_name": {"type": "string", "examples": ["cutout.png"]},
            "file_size": {"type": "integer", "minimum": 1, "description": "Bytes of the decoded image."},
            "width": {"type": "integer", "minimum": 1},
            "height": {"type": "integer", "minimum": 1},
        },
    }


def json_answer() -> JSON:
    return {
        "type": "object",
        "required": ["image"],
        "properties": {"image": _file_schema(), "mask": {**_file_schema(), "description": "With `output_mask`."}},
    }
