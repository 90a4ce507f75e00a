"""Parsing the output options of the rembg routes, one function per kind, from their table (app/removal/option_table.py).

Values come from multipart text fields (strings) or JSON bodies (strings, numbers, booleans)
and are parsed alike. Every bad value is a 400 `invalid_parameter` naming the field and what
it accepts; contradictory choices are a 400 that says why. With no option given, Options() is what parse answers and the picture
is the plain full-size PNG.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from PIL import ImageColor

from app.errors import ApiError, invalid_parameter
from app.imaging.codec import FORMATS, Format
from app.imaging.compose import Colour, Finish
from app.removal.option_table import (
    DECIMAL,
    FALSE_WORDS,
    FIELDS,
    INTEGER,
    MARGIN,
    MASK_FIELDS,
    MAX_MARGIN_PERCENT,
    OPTIONS,
    SIGNED_INTEGER,
    TRUE_WORDS,
    Kind,
    Option,
)

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
    refine_foreground: bool | None = None  # None: the model's own

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
            **({} if self.refine_foreground is None else {"refine_foreground": self.refine_foreground}),
        }
        return json.dumps(described, sort_keys=True)


def _bad(option: Option, value: object, accepts: str) -> ApiError:
    shown = repr(value)[:40]
    return invalid_parameter(f"Invalid {option.name} {shown}: {option.name} accepts {accepts}.")


def _bool(option: Option, value: object) -> dict[str, Any]:
    """FLAG_RULE: true/false, 1/0, yes/no, on/off in any case (empty values never get here: left out)."""
    if isinstance(value, bool):
        return {option.name: value}
    if isinstance(value, int) and value in (0, 1):  # JSON's 1/0
        return {option.name: bool(value)}
    word = value.strip().lower() if isinstance(value, str) else None
    if word in TRUE_WORDS or word in FALSE_WORDS:
        return {option.name: word in TRUE_WORDS}
    raise _bad(option, value, "true or false (or 1/0, yes/no, on/off, in any case)")


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
    for name in ("max_side", "bg_blur"):  # 0: the full size, no blurred background (as left out)
        if values.get(name) == 0:
            del values[name]
    return values


def parse(given: Mapping[str, object], bg_image: bytes | None, *, mask: bool) -> Options:
    """Options from the request's fields (names already checked against FIELDS)."""
    # An empty value is as if the field were left out (FLAG_RULE): forms send every field they have.
    given = {name: value for name, value in given.items() if not (isinstance(value, str) and not value.strip())}
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
    finish = options.finish
    backgrounds = [name for name, value in (("bg_color", finish.bg_color), ("bg_blur", finish.bg_blur)) if value]
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
