"""Output options of the rembg routes: names, parsing and validation.

One home for what a client may ask for beyond the plain cut-out (crop, format,
background, shadow, size, JSON answer). Values come from multipart text fields
(strings) or JSON bodies (strings, numbers, booleans) and are parsed alike.
Every bad value is a 400 `invalid_parameter` naming the field and what it
accepts; contradictory choices are a 400 that says why. With no option given,
`Options.changes_pixels()` is false and the routes answer exactly as before.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Literal

from PIL import ImageColor

from app.errors import ApiError, invalid_parameter

Format = Literal["png", "webp", "jpeg"]
FORMATS: tuple[Format, ...] = ("png", "webp", "jpeg")
CONTENT_TYPES: dict[str, str] = {"png": "image/png", "webp": "image/webp", "jpeg": "image/jpeg"}

# Fields that change the picture on both routes, those only a cut-out has, and those that
# shape the answer. The routes accept exactly these plus their own input fields.
GEOMETRY_FIELDS = frozenset({"crop_to_bbox", "crop_margin", "output_format", "quality", "max_side"})
CUTOUT_FIELDS = frozenset(
    {"bg_color", "bg_blur", "bg_image", "shadow", "shadow_offset_x", "shadow_offset_y", "shadow_blur", "shadow_opacity"}
)
ANSWER_FIELDS = frozenset({"sync_mode", "output_mask"})
FIELDS = GEOMETRY_FIELDS | CUTOUT_FIELDS | ANSWER_FIELDS

MAX_BLUR_PX = 200
MAX_SHADOW_OFFSET_PX = 2000
# Lossy encoders' default quality; lossless WebP ignores it.
DEFAULT_QUALITY = 90

# What a form field may hold; /openapi.json documents these same patterns, and the parser is
# never more lenient than the document (schemathesis sends values just outside them).
TRUE_WORDS = ("true", "1", "yes", "on")
FALSE_WORDS = ("false", "0", "no", "off")
FORMAT_NAMES = ("png", "webp", "jpeg", "jpg")
DECIMAL = r"^[0-9]+(\.[0-9]+)?$"
INTEGER = r"^[0-9]+$"
SIGNED_INTEGER = r"^-?[0-9]+$"
MARGIN = r"^([0-9]+(\.[0-9]+)?)(px|%)?$"


@dataclass(frozen=True)
class Options:
    crop_to_bbox: bool = False
    crop_margin: float = 0.0  # pixels, or percent of the subject's box when margin_percent
    margin_percent: bool = False
    output_format: Format = "png"
    quality: int | None = None  # None: PNG; lossless WebP; JPEG at DEFAULT_QUALITY
    bg_color: tuple[int, int, int, int] | None = None
    bg_blur: float | None = None
    bg_image: bytes | None = None
    shadow: bool = False
    shadow_offset_x: int | None = None  # None: a share of the image's longer side (app/imaging/compose.py)
    shadow_offset_y: int | None = None
    shadow_blur: float | None = None
    shadow_opacity: float = 0.5
    max_side: int | None = None
    sync_mode: bool | None = None  # None: decided by the Accept header
    output_mask: bool = False

    def changes_pixels(self) -> bool:
        """False when the picture is the plain full-size PNG of today (answer fields aside)."""
        plain = Options(sync_mode=self.sync_mode, output_mask=self.output_mask)
        return self != plain

    def fingerprint(self) -> str:
        """What the Idempotency-Key fingerprint adds for these options ("" for none, as before)."""
        if self == Options(sync_mode=self.sync_mode):
            return ""
        fields = asdict(self)
        del fields["sync_mode"]  # the same picture, as bytes or as JSON
        image = fields.pop("bg_image")
        fields["bg_image"] = None if image is None else len(image)  # the bytes are hashed by the caller
        return json.dumps(fields, sort_keys=True)

    @property
    def content_type(self) -> str:
        return CONTENT_TYPES[self.output_format]


def _bad(field: str, value: object, accepts: str) -> ApiError:
    shown = repr(value)[:40]
    return invalid_parameter(f"Invalid {field} {shown}: {field} accepts {accepts}.")


def _bool(field: str, value: object) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value in TRUE_WORDS + FALSE_WORDS:
        return value in TRUE_WORDS
    raise _bad(field, value, "true or false")


def _number(field: str, value: object, lo: float, hi: float, *, integer: bool = False) -> float:
    kind = "a whole number" if integer else "a number"
    accepts = f"{kind} from {lo:g} to {hi:g}"
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise _bad(field, value, accepts)
    pattern = (SIGNED_INTEGER if lo < 0 else INTEGER) if integer else DECIMAL
    if isinstance(value, str) and not re.fullmatch(pattern, value):
        raise _bad(field, value, accepts)
    try:
        number = float(value)
    except OverflowError:  # a JSON integer of hundreds of digits
        raise _bad(field, value, accepts) from None
    if not math.isfinite(number) or not lo <= number <= hi or (integer and number != int(number)):
        raise _bad(field, value, accepts)
    return number


def _margin(value: object) -> tuple[float, bool]:
    accepts = 'pixels ("20", "20px") or a percentage of the subject\'s box ("10%"), up to 10000 px or 100%'
    if isinstance(value, bool):
        raise _bad("crop_margin", value, accepts)
    if isinstance(value, (int, float)):
        # Compared first: math.isfinite() overflows on a JSON integer of hundreds of digits.
        if value < 0 or value > 10000 or not math.isfinite(value):
            raise _bad("crop_margin", value, accepts)
        return float(value), False
    match = re.fullmatch(MARGIN, value) if isinstance(value, str) else None
    if match is None:
        raise _bad("crop_margin", value, accepts)
    amount, percent = float(match.group(1)), match.group(3) == "%"
    if amount > (100 if percent else 10000):
        raise _bad("crop_margin", value, accepts)
    return amount, percent


def _colour(value: object) -> tuple[int, int, int, int]:
    accepts = 'a hex colour ("#RRGGBB", "#RRGGBBAA", "#RGB") or a CSS colour name ("white", "tomato")'
    if not isinstance(value, str) or not 0 < len(value) <= 40:
        raise _bad("bg_color", value, accepts)
    text = value.strip()
    if re.fullmatch(r"[0-9a-fA-F]{6}|[0-9a-fA-F]{8}", text):
        text = "#" + text  # remove.bg's spelling, without the hash
    try:
        rgba = ImageColor.getcolor(text, "RGBA")
    except ValueError:
        raise _bad("bg_color", value, accepts) from None
    assert isinstance(rgba, tuple)
    return (int(rgba[0]), int(rgba[1]), int(rgba[2]), int(rgba[3]))


def _format(value: object) -> Format:
    text = "jpeg" if value == "jpg" else value
    for name in FORMATS:
        if text == name:
            return name
    raise _bad("output_format", value, "png, webp or jpeg")


def parse(fields: Mapping[str, object], bg_image: bytes | None, *, mask: bool) -> Options:
    """Options from the request's fields (names already checked against FIELDS)."""
    if mask:
        not_here = sorted(name for name in fields if name in CUTOUT_FIELDS | {"output_mask"})
        if bg_image is not None:
            not_here.append("bg_image")
        if not_here:
            raise invalid_parameter(
                f"Only cut-outs (POST /v2/rembg/) take {', '.join(not_here)}; a mask has no colours or background. "
                "A mask takes crop_to_bbox, crop_margin, output_format, quality, max_side and sync_mode."
            )
    values: dict[str, object] = {}
    for name in ("crop_to_bbox", "shadow", "sync_mode", "output_mask"):
        if name in fields:
            values[name] = _bool(name, fields[name])
    if "crop_margin" in fields:
        values["crop_margin"], values["margin_percent"] = _margin(fields["crop_margin"])
    if "output_format" in fields:
        values["output_format"] = _format(fields["output_format"])
    if "quality" in fields:
        values["quality"] = int(_number("quality", fields["quality"], 1, 100, integer=True))
    if "bg_color" in fields:
        values["bg_color"] = _colour(fields["bg_color"])
    if "bg_blur" in fields:
        values["bg_blur"] = _number("bg_blur", fields["bg_blur"], 0.5, MAX_BLUR_PX)
    for name in ("shadow_offset_x", "shadow_offset_y"):
        if name in fields:
            limit = MAX_SHADOW_OFFSET_PX
            values[name] = int(_number(name, fields[name], -limit, limit, integer=True))
    if "shadow_blur" in fields:
        values["shadow_blur"] = _number("shadow_blur", fields["shadow_blur"], 0, MAX_BLUR_PX)
    if "shadow_opacity" in fields:
        values["shadow_opacity"] = _number("shadow_opacity", fields["shadow_opacity"], 0, 1)
    if "max_side" in fields:
        values["max_side"] = int(_number("max_side", fields["max_side"], 1, 100000, integer=True))
    # A margin asks for the crop and a shadow setting for the shadow, unless the flag says no: then,
    # like quality for a PNG, it is a setting of something switched off, and is ignored (a form or a
    # UI may send all its fields and toggle one flag).
    tunables = {"shadow_offset_x", "shadow_offset_y", "shadow_blur", "shadow_opacity"}
    if "crop_margin" in values:
        values.setdefault("crop_to_bbox", True)
        if not values["crop_to_bbox"]:
            del values["crop_margin"], values["margin_percent"]
    if tunables & set(values):
        values.setdefault("shadow", True)
        if not values["shadow"]:
            values = {name: value for name, value in values.items() if name not in tunables}
    if values.get("output_format", "png") == "png":
        values.pop("quality", None)
    options = Options(**values, bg_image=bg_image)  # type: ignore[arg-type]
    _check_contradictions(options, set(fields))
    return options


def _check_contradictions(options: Options, given: set[str]) -> None:
    backgrounds = [name for name in ("bg_color", "bg_blur") if name in given]
    if options.bg_image is not None:
        backgrounds.append("bg_image")
    if len(backgrounds) > 1:
        raise invalid_parameter(f"Choose one background: {' and '.join(backgrounds)} were both given.")
    if options.output_format == "jpeg" and options.bg_color is not None and options.bg_color[3] < 255:
        raise invalid_parameter(
            "JPEG has no transparency, so its bg_color must be opaque; drop the alpha from bg_color "
            "or choose output_format png or webp."
        )
    if options.output_mask and options.sync_mode is False:
        raise invalid_parameter("output_mask returns the mask inside a JSON answer: it needs sync_mode=true.")
