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
# A flag's words, in any case (Python's `True`, PHP's "" for false); JSON's true/false and 1/0 too.
TRUE_WORDS = ("true", "1", "yes", "on")
FALSE_WORDS = ("false", "0", "no", "off")
# Any option's empty value is as if the field were left out (for a flag: false): a form (PHP, Swagger
# UI, an HTML form) sends every field it has.
FLAG_RULE = (
    "Flags take `true`/`false`, `1`/`0`, `yes`/`no` or `on`/`off` in any case (JSON: `true`/`false` or "
    "`1`/`0`); any option sent empty counts as left out, so an empty flag is `false`."
)
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
        "Keep the photo's own background, Gaussian-blurred with this radius ({low}-{high} px; 0: none), behind the "
        "sharp subject. Opaque.",
        0,
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
        "Downscale the finished result so its longer side is at most this; never upscales; 0: full size.",
        0,
        100000,
        default="0",
        on_mask=True,
        examples=("1024",),
    ),
    Option(
        "sync_mode",
        "bool",
        "`true`: answer JSON with the image as a data URI; `false`: the image's bytes; left out: as the `Accept` "
        "header prefers (JSON only when it ranks JSON above the image).",
        default="by `Accept`",
        on_mask=True,
    ),
    Option(
        "output_mask",
        "bool",
        "With a JSON answer: add the mask (same crop, size and format) as `mask`.",
        default="false",
    ),
    Option(
        "refine_foreground",
        "bool",
        "Estimate the subject's own colours on soft edges (hair, fur: no halo of the old background) with the full "
        "estimate, as fal's `refine_foreground`; `false` keeps the photo's colours. Default: {default}.",
        default="the model's own (the full estimate on aurora, a fast one at 1/8 size on ghost and falcon)",
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


@dataclass(frozen=True)
class Alias:
    """Another API's name for one of our fields, accepted as that field where the meaning is the same.

    `values` translates their values to ours (matched in any case); with `closed`, only those are
    accepted. docs/migrating.md's table is rendered from ALIASES and SAME_NAMES (`aliases_markdown`).
    """

    name: str
    ours: str
    apis: str
    values: tuple[tuple[str, str], ...] = ()
    closed: bool = False
    note: str = ""


# remove.bg's and PhotoRoom's `size`, as the longer side it allows (0: the full size). Their preview is
# up to 0.25 MP (625 x 400), medium up to 1.5 MP, hd up to 4 MP: the nearest longer sides.
SIZE_SIDES = (("preview", "625"), ("small", "625"), ("regular", "625"), ("medium", "1500"), ("hd", "2500"))
SIZE_FULL = (("full", "0"), ("4k", "0"), ("50mp", "0"), ("auto", "0"))
CHANNELS = (("rgba", "cutout"), ("alpha", "mask"))
MASK_ROUTE = "POST /v2/rembg/mask/"

ALIASES: tuple[Alias, ...] = (
    Alias("image_file", "image", "remove.bg, PhotoRoom", note="the photo's file part"),
    Alias("image_file_b64", "image_data_uri", "remove.bg", note="plain base64 (a data URI works too), in a JSON body"),
    Alias("bg_image_file", "bg_image", "remove.bg", note="the background's file part"),
    Alias("format", "output_format", "remove.bg, PhotoRoom", values=(("auto", "png"), ("jpg", "jpeg"))),
    Alias(
        "size",
        "max_side",
        "remove.bg, PhotoRoom",
        values=SIZE_SIDES + SIZE_FULL,
        closed=True,
        note="preview/small/regular: 625, medium: 1500, hd: 2500, full/4k/50MP/auto: full size",
    ),
    Alias("crop", "crop_to_bbox", "remove.bg, PhotoRoom"),
    Alias("add_shadow", "shadow", "remove.bg"),
    Alias(
        "channels", MASK_ROUTE, "remove.bg, PhotoRoom", values=CHANNELS, closed=True, note="`alpha`: the mask instead"
    ),
)
ALIAS_BY_NAME = {alias.name: alias for alias in ALIASES}
# Their names that are ours already, with the same meaning.
SAME_NAMES: tuple[tuple[str, str], ...] = (
    ("image_url", "remove.bg, fal"),
    ("bg_image_url", "remove.bg"),
    ("bg_color", "remove.bg, PhotoRoom"),
    ("crop_margin", "remove.bg"),
    ("output_format", "fal"),
    ("operating_resolution", "fal"),
    ("refine_foreground", "fal"),
    ("sync_mode", "fal"),
    ("output_mask", "fal"),
)


def aliases_markdown() -> str:
    """ALIASES and SAME_NAMES as the Markdown table of docs/migrating.md."""
    rows = ["| their field | APIs | ours | values |", "|---|---|---|---|"]
    for alias in ALIASES:
        values = alias.note or ", ".join(f"`{theirs}` as `{ours}`" for theirs, ours in alias.values) or "the same"
        rows.append(f"| `{alias.name}` | {alias.apis} | `{alias.ours}` | {values} |")
    for name, apis in SAME_NAMES:
        rows.append(f"| `{name}` | {apis} | `{name}` | the same |")
    return "\n".join(rows) + "\n"
