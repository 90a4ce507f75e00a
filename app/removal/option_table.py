"""The output options of the rembg routes, each declared once: name, kind, range, default, description.

The parser (app/removal/options.py), /openapi.json's schemas (app/openapi/options.py) and the
docs' option reference (`reference_markdown`) are built from OPTIONS: an option added here is
parsed, documented and described everywhere.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from app.imaging.codec import DEFAULT_QUALITY, FORMATS
from app.imaging.compose import SHADOW_BLUR_SHARE, SHADOW_OFFSET_X_SHARE, SHADOW_OFFSET_Y_SHARE, Finish

# What a form field may hold; /openapi.json documents these same patterns, and the parser is
# never more lenient than the document (schemathesis sends values just outside them).
TRUE_WORDS = ("true", "1", "yes", "on")
FALSE_WORDS = ("false", "0", "no", "off")
FORMAT_NAMES = ("png", "webp", "jpeg", "jpg")
DECIMAL = r"^[0-9]+(\.[0-9]+)?$"
INTEGER = r"^[0-9]+$"
SIGNED_INTEGER = r"^-?[0-9]+$"
MARGIN = r"^([0-9]+(\.[0-9]+)?)(px|%)?$"
MAX_MARGIN_PERCENT = 100

Kind = Literal["bool", "integer", "number", "margin", "colour", "format", "file"]


@dataclass(frozen=True)
class Option:
    name: str
    kind: Kind
    description: str
    low: float = 0  # the range of a number, integer or margin (in px)
    high: float = 0
    default: str = ""  # as the reference shows it; the value itself is Options()'s
    on_mask: bool = False  # POST /v2/rembg/mask/ takes it too (every option is a cut-out's)
    examples: tuple[str, ...] = ()


MAX_BLUR_PX = 200
MAX_SHADOW_OFFSET_PX = 2000

# Descriptions may name {low}, {high} and {default}: filled in from the entry itself (`describe`).
OPTIONS: tuple[Option, ...] = (
    Option("bg_image", "file", "A second file part: the subject composited over this image, scaled to cover."),
    Option(
        "crop_to_bbox",
        "bool",
        "Crop to the subject's bounding box (alpha above ~4%; with `shadow`, the shadow too).",
        default="false",
        on_mask=True,
    ),
    Option(
        "crop_margin",
        "margin",
        "Margin around the subject's box, in pixels or % of the box (clamped to the photo); implies "
        "`crop_to_bbox` (ignored with `crop_to_bbox=false`).",
        0,
        10000,
        default="0",
        on_mask=True,
        examples=("20", "20px", "10%"),
    ),
    Option(
        "output_format",
        "format",
        "`{default}` (default); `webp`: lossless with alpha, lossy with `quality`; `jpeg`: no alpha, composited over "
        "`bg_color` (white by default).",
        default="png",
        on_mask=True,
    ),
    Option(
        "quality",
        "integer",
        "{low}-{high}, for `jpeg` (default {default}) or lossy `webp`; ignored for `png`.",
        1,
        100,
        default=f"{DEFAULT_QUALITY}",
        on_mask=True,
        examples=("80",),
    ),
    Option(
        "bg_color",
        "colour",
        "Composite over this colour: `#RRGGBB`, `#RRGGBBAA`, `#RGB` or a CSS colour name. Opaque: an RGB image.",
        examples=("#FFFFFF", "#00000080", "white", "tomato"),
    ),
    Option(
        "bg_blur",
        "number",
        "Keep the photo's own background, Gaussian-blurred with this radius ({low}-{high} px), behind the sharp "
        "subject. Opaque.",
        0.5,
        MAX_BLUR_PX,
        examples=("12",),
    ),
    Option(
        "shadow",
        "bool",
        "A soft drop shadow under the subject, drawn before cropping and background.",
        default="false",
    ),
    Option(
        "shadow_offset_x",
        "integer",
        "Implies `shadow`: shift right in px (default {default}; negative: left).",
        -MAX_SHADOW_OFFSET_PX,
        MAX_SHADOW_OFFSET_PX,
        default=f"{SHADOW_OFFSET_X_SHARE:.0%} of the longer side",
    ),
    Option(
        "shadow_offset_y",
        "integer",
        "Implies `shadow`: shift down in px (default {default}; negative: up).",
        -MAX_SHADOW_OFFSET_PX,
        MAX_SHADOW_OFFSET_PX,
        default=f"{SHADOW_OFFSET_Y_SHARE:.0%} of the longer side",
    ),
    Option(
        "shadow_blur",
        "number",
        "Implies `shadow`: blur radius in px (default {default}).",
        0,
        MAX_BLUR_PX,
        default=f"{SHADOW_BLUR_SHARE:.1%} of the longer side",
    ),
    Option(
        "shadow_opacity",
        "number",
        "Implies `shadow`: its opacity, {low}-{high} (default {default}). Shadow settings are ignored with "
        "`shadow=false`.",
        0,
        1,
        default=f"{Finish.shadow_opacity:g}",
    ),
    Option(
        "max_side",
        "integer",
        "Downscale the finished result so its longer side is at most this; never upscales.",
        1,
        100000,
        on_mask=True,
        examples=("1024",),
    ),
    Option(
        "sync_mode",
        "bool",
        "`true`: answer JSON with the image as a data URI (as does `Accept: application/json`).",
        default="by `Accept`",
        on_mask=True,
    ),
    Option(
        "output_mask",
        "bool",
        "With a JSON answer: add the mask (same crop, size and format) as `mask`.",
        default="false",
    ),
)
BY_NAME = {option.name: option for option in OPTIONS}
# The option fields a request may carry (bg_image is a file part in a form, a data URI in JSON).
FIELDS = frozenset(BY_NAME)
MASK_FIELDS = frozenset(option.name for option in OPTIONS if option.on_mask)


_SHOWN_KIND = {
    "bool": "boolean",
    "integer": "integer",
    "number": "number",
    "margin": "px or %",
    "colour": "colour",
    "format": " / ".join(FORMATS),
    "file": "image file",
}


def _range(option: Option) -> str:
    if option.kind in ("integer", "number"):
        return f"{option.low:g} to {option.high:g}"
    if option.kind == "margin":
        return f"{option.low:g} to {option.high:g} px, or up to {MAX_MARGIN_PERCENT}%"
    return ""


def describe(option: Option) -> str:
    """The option's description, its range and default filled in (/openapi.json and the docs show it)."""
    return option.description.format(low=f"{option.low:g}", high=f"{option.high:g}", default=option.default)


def reference_markdown() -> str:
    """OPTIONS as the Markdown table of the docs' option reference."""
    rows = ["| field | type | range | default | mask route | what it does |", "|---|---|---|---|---|---|"]
    for option in OPTIONS:
        mask = "yes" if option.on_mask else "no"
        default = option.default or "none"
        rows.append(
            f"| `{option.name}` | {_SHOWN_KIND[option.kind]} | {_range(option)} | {default} | {mask} | "
            f"{describe(option)} |"
        )
    return "\n".join(rows) + "\n"
