"""The OpenAPI text of the rembg routes' output options, image_url and JSON bodies (app/openapi/document.py uses it).

Built from the option table (app/removal/options.py OPTIONS): an option added there is documented here.
"""

from __future__ import annotations

import base64
import io
import re
from typing import Any

from PIL import Image, ImageDraw

from app.imaging.codec import CONTENT_TYPES
from app.removal import option_table as options
from app.removal.fetch import MAX_REDIRECTS
from app.removal.option_table import OPTIONS, Option
from app.removal.submission import MAX_FIELD_BYTES, MAX_JSON_URL_CHARS

JSON = dict[str, Any]


def _any_case(word: str) -> str:
    return "".join(f"[{c.upper()}{c.lower()}]" if c.isalpha() else re.escape(c) for c in word)


# What the parser takes for a flag in text (option_table.FLAG_RULE), and an empty value (left out).
_FLAG_WORDS = "|".join(_any_case(word) for word in (*options.TRUE_WORDS, *options.FALSE_WORDS))
_BOOL_TEXT: JSON = {"type": "string", "pattern": rf"^\s*({_FLAG_WORDS})?\s*$"}
_EMPTY: JSON = {"type": "string", "pattern": r"^\s*$", "description": "Empty: as if left out."}

# Shared by both routes' form and JSON bodies: one class in a generated client, not four.
COMPONENTS: dict[str, JSON] = {"OutputFormat": {"type": "string", "enum": list(options.FORMAT_NAMES)}}

_IMAGE_URL = (
    f"Fetch the photo from this http(s) URL instead (public addresses only; at most {MAX_REDIRECTS} redirects; "
    "same size limit as uploads). Failures: 400 `image_url_forbidden`, `image_url_unreachable`, `image_url_too_large`."
)
BG_IMAGE_URL = (
    "Fetch a background image from this http(s) URL, as `bg_image` (the same rules and price as `image_url`'s "
    "fetch, plus `bg_image`'s)."
)
IMAGE_URL_IN_FORM = (
    f" Or leave this part out and send a text field `image_url` (up to {MAX_FIELD_BYTES // 1024} KB): the photo "
    "is fetched from there, as with `image_url` in a JSON body."
)


def _optional(pattern: str) -> str:
    """A value pattern that also takes an empty value (left out)."""
    return rf"^\s*$|{pattern}"


def _text(option: Option) -> JSON:
    """The option as text (a JSON body's string; what a form's part holds), an empty value included."""
    if option.kind == "bool":
        return dict(_BOOL_TEXT)
    if option.kind == "integer":
        return {"type": "string", "pattern": _optional(options.SIGNED_INTEGER if option.low < 0 else options.INTEGER)}
    if option.kind == "number":
        return {"type": "string", "pattern": _optional(options.DECIMAL)}
    if option.kind == "margin":
        return {"type": "string", "pattern": _optional(options.MARGIN)}
    if option.kind == "format":
        return {"type": "string", "pattern": _optional(f"^({'|'.join(options.FORMAT_NAMES)})$")}
    if option.kind == "file":
        return {"type": "string", "format": "binary"}
    return {"type": "string", "maxLength": 40}  # a colour


def _plain(number: float) -> float | int:
    return int(number) if float(number).is_integer() else number


def _native(option: Option) -> JSON | None:
    """The schema of the option as a JSON value of its own type, where it has one besides text."""
    if option.kind == "bool":
        return {"type": "boolean"}
    if option.kind in ("integer", "number"):
        return {"type": option.kind, "minimum": _plain(option.low), "maximum": _plain(option.high)}
    if option.kind == "margin":
        return {"type": "number", "minimum": _plain(option.low), "maximum": _plain(option.high)}
    return None


def _default(option: Option) -> object:
    """The form's default: the option's own value where it has a fixed one, else "" (left out), so a
    form that sends every field (Swagger UI's "Try it out") asks for nothing by default."""
    if option.kind == "bool" and option.default in ("true", "false"):
        return option.default == "true"
    if option.kind in ("integer", "number"):
        try:
            return _plain(float(option.default))
        except ValueError:
            return ""
    return option.default if option.kind in ("format", "margin") else ""


def _typed(option: Option) -> JSON:
    """The option as a form field: its own type first (Swagger UI shows a checkbox-like select for a
    flag, a number box for a number), the text the parser also takes second."""
    if option.kind == "format":
        typed: JSON = {"anyOf": [{"$ref": "#/components/schemas/OutputFormat"}, _EMPTY]}
    elif option.kind == "bool":
        typed = {"anyOf": [{"type": "boolean"}, _BOOL_TEXT]}
    elif option.kind in ("integer", "number"):
        native = _native(option)
        assert native is not None
        typed = {"anyOf": [native, _EMPTY]}
    else:
        typed = _text(option)
    return {**typed, "default": _default(option)}


def _shown(option: Option) -> bool:
    return option.kind != "file"  # a file part in a form; JSON bodies carry it as bg_image_data_uri


def form_properties(mask: bool) -> JSON:
    """Multipart fields beyond `image` and `model` (`image_url` is told in `image`'s description:
    a form carries one of the two, and this schema lists the upload)."""
    return {
        option.name: {**_typed(option), "description": _described(option)}
        for option in OPTIONS
        if option.on_mask or not mask
    }


def _described(option: Option) -> str:
    examples = ", ".join(f"`{example}`" for example in option.examples)
    extra = f" Examples: {examples}." if examples else ""
    return options.describe(option) + extra


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
        "image_url": {"type": "string", "maxLength": MAX_JSON_URL_CHARS, "description": _IMAGE_URL},
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
        props["bg_image_url"] = {"type": "string", "maxLength": MAX_JSON_URL_CHARS, "description": BG_IMAGE_URL}
    for option in OPTIONS:
        if (mask and not option.on_mask) or not _shown(option):
            continue
        # JSON takes the native type (a flag also 1/0) or the form's text.
        text, native = _text(option), _native(option)
        description = _described(option)
        kinds = [native, {"type": "integer", "minimum": 0, "maximum": 1}] if option.kind == "bool" else [native]
        props[option.name] = (
            {"anyOf": [*kinds, text], "description": description} if native else {**text, "description": description}
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
            "content_type": {"type": "string", "enum": sorted(CONTENT_TYPES.values())},
            "file_name": {"type": "string", "examples": ["cutout.png"]},
            "file_size": {"type": "integer", "minimum": 1, "description": "Bytes of the decoded image."},
            "width": {"type": "integer", "minimum": 1},
            "height": {"type": "integer", "minimum": 1},
        },
    }


def json_answer() -> JSON:
    return {
        "type": "object",
        "required": ["image", "confidence"],
        "properties": {
            "image": _file_schema(),
            "mask": {**_file_schema(), "description": "With `output_mask`."},
            "confidence": CONFIDENCE,
        },
    }


CONFIDENCE: JSON = {
    "type": "number",
    "minimum": 0,
    "maximum": 1,
    "description": "How far to trust the mask (0-1), as X-Mask-Confidence says: below the threshold model=auto "
    "escalates at (GET /v2/account: models.auto.escalates_below_confidence), look at the cut-out (or send "
    "model=auto, or aurora). docs/models.md, Confidence and model=auto.",
}
