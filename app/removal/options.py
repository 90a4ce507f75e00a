"""Output options of the rembg routes: the one table of them, and their parsing.

Each option is declared once, in OPTIONS (name, kind, range, description, which routes take
it); the parser here, /openapi.json's schemas (app/openapi/options.py) and the docs' option
reference (`reference_markdown`) are built from it. Values come from multipart text fields
(strings) or JSON bodies (strings, numbers, booleans) and are parsed alike. Every bad value
is a 400 `invalid_parameter` naming the field and what it accepts; contradictory choices are
a 400 that says why. With no option given, Options() is what parse answers and the picture
is the plain full-size PNG.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Literal

from PIL import ImageColor

from app.errors import ApiError, invalid_parameter
from app.imaging.codec import DEFAULT_QUALITY, FORMATS, Format
from app.imaging.compose import SHADOW_BLUR_SHARE, SHADOW_OFFSET_X_SHARE, SHADOW_OFFSET_Y_SHARE, Colour, Finish

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
_FINISH_FIELDS = frozenset(f.name for f in fields(Finish))
_SHADOW_TUNABLES = frozenset({"shadow_offset_x", "shadow_offset_y", "shadow_blur", "shadow_opacity"})


@dataclass(frozen=True)
class Options:
    finish: Finish = field(default_factory=Finish)
    output_format: Format = "png"
    quality: int | None = None  # None: PNG; lossless WebP; JPEG at DEFAULT_QUALITY
    bg_image: bytes | None = None
    sync_mode: bool | None = None  # None: decided by the Accept header
    output_mask: bool = False

    def fingerprint(self) -> str:
        """What the Idempotency-Key fingerprint adds for these options ("" for none, as before)."""
        if self == Options(sync_mode=self.sync_mode):
            return ""
        # sync_mode is left out: the same picture, as bytes or as JSON. The bytes of bg_image are hashed by the caller.
        described = {
            **asdict(self.finish),
            "output_format": self.output_format,
            "quality": self.quality,
            "bg_image": None if self.bg_image is None else len(self.bg_image),
            "output_mask": self.output_mask,
        }
        return json.dumps(described, sort_keys=True)


def _bad(option: Option, value: object, accepts: str) -> ApiError:
    shown = repr(value)[:40]
    return invalid_parameter(f"Invalid {option.name} {shown}: {option.name} accepts {accepts}.")


def _bool(option: Option, value: object) -> dict[str, Any]:
    if isinstance(value, bool):
        return {option.name: value}
    if isinstance(value, str) and value in TRUE_WORDS + FALSE_WORDS:
        return {option.name: value in TRUE_WORDS}
    raise _bad(option, value, "true or false")


def _checked_number(option: Option, value: object, *, integer: bool) -> float:
    lo, hi = option.low, option.high
    accepts = f"{'a whole number' if integer else 'a number'} from {lo:g} to {hi:g}"
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise _bad(option, value, accepts)
    pattern = (SIGNED_INTEGER if lo < 0 else INTEGER) if integer else DECIMAL
    if isinstance(value, str) and not re.fullmatch(pattern, value):
        raise _bad(option, value, accepts)
    try:
        number = float(value)
    except OverflowError:  # a JSON integer of hundreds of digits
        raise _bad(option, value, accepts) from None
    if not math.isfinite(number) or not lo <= number <= hi or (integer and number != int(number)):
        raise _bad(option, value, accepts)
    return number


def _number(option: Option, value: object) -> dict[str, Any]:
    return {option.name: _checked_number(option, value, integer=False)}


def _integer(option: Option, value: object) -> dict[str, Any]:
    return {option.name: int(_checked_number(option, value, integer=True))}


def _margin(option: Option, value: object) -> dict[str, Any]:
    accepts = (
        f'pixels ("20", "20px") or a percentage of the subject\'s box ("10%"), up to {option.high:g} px '
        f"or {MAX_MARGIN_PERCENT}%"
    )
    if isinstance(value, bool):
        raise _bad(option, value, accepts)
    if isinstance(value, (int, float)):
        # Compared first: math.isfinite() overflows on a JSON integer of hundreds of digits.
        if value < option.low or value > option.high or not math.isfinite(value):
            raise _bad(option, value, accepts)
        return {"crop_margin": float(value), "margin_percent": False}
    match = re.fullmatch(MARGIN, value) if isinstance(value, str) else None
    if match is None:
        raise _bad(option, value, accepts)
    amount, percent = float(match.group(1)), match.group(3) == "%"
    if amount > (MAX_MARGIN_PERCENT if percent else option.high):
        raise _bad(option, value, accepts)
    return {"crop_margin": amount, "margin_percent": percent}


def _colour(option: Option, value: object) -> dict[str, Any]:
    accepts = 'a hex colour ("#RRGGBB", "#RRGGBBAA", "#RGB") or a CSS colour name ("white", "tomato")'
    if not isinstance(value, str) or not 0 < len(value) <= 40:
        raise _bad(option, value, accepts)
    text = value.strip()
    if re.fullmatch(r"[0-9a-fA-F]{6}|[0-9a-fA-F]{8}", text):
        text = "#" + text  # remove.bg's spelling, without the hash
    try:
        rgba = ImageColor.getcolor(text, "RGBA")
    except ValueError:
        raise _bad(option, value, accepts) from None
    if not isinstance(rgba, tuple):  # RGBA always answers four values; an int would be a grey level
        raise _bad(option, value, accepts)
    colour: Colour = (int(rgba[0]), int(rgba[1]), int(rgba[2]), int(rgba[3]))
    return {option.name: colour}


def _format(option: Option, value: object) -> dict[str, Any]:
    text = "jpeg" if value == "jpg" else value
    for name in FORMATS:
        if text == name:
            return {option.name: name}
    raise _bad(option, value, "png, webp or jpeg")


def _file(option: Option, value: object) -> dict[str, Any]:
    return {}  # its bytes come apart from the text fields (Submission.bg_image)


_PARSERS: dict[Kind, Callable[[Option, object], dict[str, Any]]] = {
    "bool": _bool,
    "integer": _integer,
    "number": _number,
    "margin": _margin,
    "colour": _colour,
    "format": _format,
    "file": _file,
}


def _refuse_on_mask(given: Mapping[str, object], bg_image: bytes | None) -> None:
    not_here = sorted(name for name in given if name in FIELDS - MASK_FIELDS)
    if bg_image is not None and "bg_image" not in not_here:
        not_here.append("bg_image")
    if not_here:
        *most, last = [option.name for option in OPTIONS if option.on_mask]
        raise invalid_parameter(
            f"Only cut-outs (POST /v2/rembg/) take {', '.join(not_here)}; a mask has no colours or background. "
            f"A mask takes {', '.join(most)} and {last}."
        )


def _implied(values: dict[str, Any]) -> dict[str, Any]:
    # A margin asks for the crop and a shadow setting for the shadow, unless the flag says no: then,
    # like quality for a PNG, it is a setting of something switched off, and is ignored (a form or a
    # UI may send all its fields and toggle one flag).
    if "crop_margin" in values:
        values.setdefault("crop_to_bbox", True)
        if not values["crop_to_bbox"]:
            del values["crop_margin"], values["margin_percent"]
    if _SHADOW_TUNABLES & set(values):
        values.setdefault("shadow", True)
        if not values["shadow"]:
            values = {name: value for name, value in values.items() if name not in _SHADOW_TUNABLES}
    if values.get("output_format", "png") == "png":
        values.pop("quality", None)
    return values


def parse(given: Mapping[str, object], bg_image: bytes | None, *, mask: bool) -> Options:
    """Options from the request's fields (names already checked against FIELDS)."""
    if mask:
        _refuse_on_mask(given, bg_image)
    values: dict[str, Any] = {}
    for option in OPTIONS:
        if option.name in given:
            values.update(_PARSERS[option.kind](option, given[option.name]))
    values = _implied(values)
    finish = Finish(**{name: value for name, value in values.items() if name in _FINISH_FIELDS})
    rest = {name: value for name, value in values.items() if name not in _FINISH_FIELDS}
    options = Options(finish=finish, bg_image=bg_image, **rest)
    _check_contradictions(options, set(given))
    return options


def _check_contradictions(options: Options, given: set[str]) -> None:
    backgrounds: list[str] = [name for name in ("bg_color", "bg_blur") if name in given]
    if options.bg_image is not None:
        backgrounds.append("bg_image")
    if len(backgrounds) > 1:
        raise invalid_parameter(f"Choose one background: {' and '.join(backgrounds)} were both given.")
    colour = options.finish.bg_color
    if options.output_format == "jpeg" and colour is not None and colour[3] < 255:
        raise invalid_parameter(
            "JPEG has no transparency, so its bg_color must be opaque; drop the alpha from bg_color "
            "or choose output_format png or webp."
        )
    if options.output_mask and options.sync_mode is False:
        raise invalid_parameter("output_mask returns the mask inside a JSON answer: it needs sync_mode=true.")


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
