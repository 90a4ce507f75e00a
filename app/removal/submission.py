"""Reading a rembg request: multipart/form-data or a JSON body (fal's shape), into one Submission.

Multipart: a file part "image" (or a text field "image_url"), an optional file part
"bg_image", a text field "model" and the option fields of app/removal/option_table.py.
JSON: {"image_url": ...} or {"image_data_uri": ...}, the same options as JSON values,
and "bg_image_data_uri" for a background image. Anything else is a 400 that says what to send.
"""

from __future__ import annotations

import base64
import binascii
import difflib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import anyio
from starlette.datastructures import FormData, UploadFile
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request

from app.errors import client_closed_request, invalid_image, invalid_parameter
from app.removal.option_table import ALIAS_BY_NAME, MASK_ROUTE, Alias
from app.removal.option_table import FIELDS as OPTION_FIELDS

# Text fields are held in memory: each needs a few bytes (an image_url up to 1 KB in a form;
# longer URLs go in a JSON body). Extra parts are parsed (bounded) only so the error can name them.
MAX_FIELD_BYTES = 1024
MAX_FORM_PARTS = 32
MAX_JSON_URL_CHARS = 8192
INPUT_FIELDS = frozenset({"image", "image_url", "bg_image_url", "model", "operating_resolution", "webhook_url"})
FORM_FILES = frozenset({"image", "bg_image"})
FORM_FIELDS = INPUT_FIELDS | OPTION_FIELDS
JSON_FIELDS = (INPUT_FIELDS - {"image"}) | {"image_data_uri", "bg_image_data_uri"} | (OPTION_FIELDS - {"bg_image"})
# A name this close to one of ours (difflib's ratio) is answered with "did you mean".
SUGGEST_CUTOFF = 0.7
FORM_KNOWN = FORM_FIELDS | set(ALIAS_BY_NAME) - {"image_file_b64"}
JSON_KNOWN = JSON_FIELDS | set(ALIAS_BY_NAME) - {"image_file", "bg_image_file"}
SEND_HINT = (
    'Send multipart/form-data with the photo as a file part named "image" '
    '(curl: -F image=@photo.jpg) and optionally a text field "model", '
    'or an application/json body with "image_url" or "image_data_uri".'
)
_DATA_URI = re.compile(r"^data:([\w.+-]+/[\w.+-]+)?((?:;[\w.+-]+=[\w.+-]+)*);base64,", re.IGNORECASE)


@dataclass
class Submission:
    image: bytes | None  # None when image_url is to be fetched
    image_url: str | None
    model: str | None
    fields: Mapping[str, object] = field(default_factory=dict)  # the option fields, as sent
    bg_image: bytes | None = None
    operating_resolution: str | None = None  # "1024x1024"; None: the model's default
    bg_image_url: str | None = None  # the background to fetch (remove.bg's bg_image_url)
    output: str | None = None  # "cutout" or "mask" when `channels` chose it; None: the route's
    webhook_url: str | None = None  # given: the request becomes an asynchronous job (app/jobs/)


def _suggest(unknown: list[str], known: frozenset[str]) -> str:
    """The unknown names, each with the nearest of ours when one is close ("did you mean")."""
    shown = []
    for name in unknown:
        near = difflib.get_close_matches(name.lower(), sorted(known), n=1, cutoff=SUGGEST_CUTOFF)
        shown.append(f"{name[:40]!r} (did you mean {near[0]!r}?)" if near else repr(name[:40]))
    return ", ".join(shown)


def _translated(alias: Alias, value: object) -> object:
    """Their value as ours (option_table.ALIASES); 400 for a value a closed alias does not list."""
    if not isinstance(value, str) or not alias.values:
        return value
    for theirs, ours in alias.values:
        if value.strip().lower() == theirs:
            return ours
    if alias.closed:
        accepted = ", ".join(theirs for theirs, _ in alias.values)
        raise invalid_parameter(f"Invalid {alias.name} {value[:40]!r}: {alias.name} accepts {accepted}.")
    return value


def _as_ours(pairs: list[tuple[str, Any]]) -> list[tuple[str, Any]]:
    """Other APIs' field names (option_table.ALIASES) as ours, their values translated; an alias
    sent with the field it stands for is a 400. `channels` keeps its name: it chooses the route."""
    names = {name for name, _ in pairs}
    both = sorted(name for name in names if name in ALIAS_BY_NAME and ALIAS_BY_NAME[name].ours in names)
    if both:
        choices = ", ".join(f"{name!r} or {ALIAS_BY_NAME[name].ours!r}" for name in both)
        raise invalid_parameter(f"Send {choices}, not both: they are the same field.")
    ours: list[tuple[str, Any]] = []
    for name, value in pairs:
        alias = ALIAS_BY_NAME.get(name)
        if alias is None:
            ours.append((name, value))
        else:
            ours.append((name if alias.ours == MASK_ROUTE else alias.ours, _translated(alias, value)))
    return ours


def _blank(name: str, value: object) -> bool:
    """Options handle their own empty values (app/removal/options.py); these input fields are dropped."""
    return name in ("image_url", "bg_image_url", "bg_image", "image") and isinstance(value, str) and not value.strip()


def _names(names: list[str]) -> str:
    # Client-chosen names are echoed only cut short and quoted.
    return ", ".join(repr(name[:40]) for name in names)


async def read(request: Request) -> Submission:
    """The request's input and options, or a 400 that says what to send."""
    content_type = request.headers.get("content-type", "")
    media_type = content_type.split(";")[0].strip().lower()
    if media_type == "application/json":
        return await _read_json(request)
    if media_type != "multipart/form-data":
        received = content_type.split(";")[0].strip()[:60] or "no Content-Type"
        raise invalid_image(f"Expected a multipart/form-data body, got {received}. {SEND_HINT}")
    try:
        async with request.form(
            max_files=MAX_FORM_PARTS, max_fields=MAX_FORM_PARTS, max_part_size=MAX_FIELD_BYTES
        ) as form:
            return await _extract(form)
    except HTTPException as exc:
        reason = str(exc.detail).rstrip(".")
        raise invalid_parameter(f"The multipart body could not be read ({reason}). {SEND_HINT}") from None
    except ClientDisconnect:
        raise client_closed_request() from None


async def _extract(form: FormData) -> Submission:
    # An empty text field is as if left out (a form sends every field it has, Swagger UI an empty bg_image).
    items = [(name, value) for name, value in _as_ours(form.multi_items()) if not _blank(name, value)]
    sent: dict[str, list[Any]] = {}
    for name, value in items:
        sent.setdefault(name, []).append(value)
    files = [name for name, value in items if isinstance(value, UploadFile)]
    unknown = sorted(set(sent) - FORM_FIELDS - {"channels"})
    if "image" not in sent and "image_url" not in sent:
        got = f" Got a file in {_names(files)}." if files else ""
        hint = f" Unknown field(s): {_suggest(unknown, FORM_KNOWN)}." if unknown else ""
        raise invalid_image(f'No file part named "image".{got}{hint} {SEND_HINT}')
    if unknown:
        raise invalid_parameter(f"Unknown form field(s): {_suggest(unknown, FORM_KNOWN)}. {SEND_HINT}")
    repeated = sorted(name for name, values in sent.items() if len(values) > 1)
    if repeated:
        raise invalid_parameter(f"Send each field once; got several {_names(repeated)}. {SEND_HINT}")
    stray = sorted(set(files) - FORM_FILES)
    if stray:
        raise invalid_parameter(f"Send exactly one photo file; {_names(stray)} may not be files. {SEND_HINT}")
    if "image" in sent and "image_url" in sent:
        raise invalid_parameter('Send either a file part "image" or a field "image_url", not both.')
    upload = sent.get("image", [None])[0]
    if upload is not None and not isinstance(upload, UploadFile):
        raise invalid_image(f'"image" was sent as a text field; send the photo as a file part. {SEND_HINT}')
    bg_upload = sent.get("bg_image", [None])[0]
    if bg_upload is not None and not isinstance(bg_upload, UploadFile):
        raise invalid_parameter('"bg_image" was sent as a text field; send the background as a file part.')
    text = {name: value for name, value in items if isinstance(value, str)}
    return Submission(
        image=await upload.read() if upload is not None else None,
        image_url=text.pop("image_url", None),
        model=text.pop("model", None),
        operating_resolution=text.pop("operating_resolution", None),
        bg_image_url=text.pop("bg_image_url", None) or None,
        output=text.pop("channels", None),
        webhook_url=text.pop("webhook_url", None),
        fields=text,
        bg_image=await bg_upload.read() if bg_upload is not None else None,
    )


def decode_data_uri(value: object, name: str) -> bytes:
    """The bytes of a base64 data URI (its media type is not trusted: the bytes are sniffed later)."""
    hint = f'{name} must be a base64 data URI, e.g. "data:image/jpeg;base64,/9j/4AAQ…".'
    if not isinstance(value, str):
        raise invalid_image(hint)
    match = _DATA_URI.match(value)
    if match is None:
        raise invalid_image(hint)
    try:
        return base64.b64decode(value[match.end() :], validate=True)
    except (binascii.Error, ValueError):
        raise invalid_image(f"{name} is not valid base64. {hint}") from None


async def _read_json(request: Request) -> Submission:
    try:
        raw = await request.body()
    except ClientDisconnect:
        raise client_closed_request() from None
    # Parsing and base64-decoding up to max_body_bytes takes tens of ms: not on the event loop.
    return await anyio.to_thread.run_sync(_parse_json, raw)


def _parse_json(raw: bytes) -> Submission:
    body, plain_b64 = _json_object(raw)
    _check_json_names(body)
    # Each field is checked in this order: the first one wrong is the one the 400 names.
    model = _text_field(body, "model", '"model" must be a string, e.g. "falcon".')
    image_url = _url_field(body, "image_url")
    image = None
    if "image_data_uri" in body:
        value = body.pop("image_data_uri")
        image = _plain_base64(value) if plain_b64 else decode_data_uri(value, "image_data_uri")
    bg_image_url = _url_field(body, "bg_image_url")
    output = _text_field(body, "channels", "channels accepts rgba or alpha.")
    bg_image = None
    if "bg_image_data_uri" in body:
        bg_image = decode_data_uri(body.pop("bg_image_data_uri"), "bg_image_data_uri")
    resolution = _text_field(body, "operating_resolution", '"operating_resolution" must be a string, e.g. "1024x1024".')
    webhook_url = _url_field(body, "webhook_url")
    return Submission(
        image=image,
        image_url=image_url,
        model=model,
        fields=body,
        bg_image=bg_image,
        operating_resolution=resolution,
        bg_image_url=bg_image_url or None,
        output=output,
        webhook_url=webhook_url,
    )


def _json_object(raw: bytes) -> tuple[dict[str, Any], bool]:
    """The body as a JSON object with other APIs' names as ours, and whether its photo is remove.bg's
    plain base64 (image_file_b64); or a 400."""
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise invalid_parameter(f"The JSON body could not be parsed. {SEND_HINT}") from None
    except RecursionError:  # thousands of nested [ or {: the parser's stack, not our bug
        raise invalid_parameter(f"The JSON body is nested too deeply. {SEND_HINT}") from None
    if not isinstance(body, dict):
        raise invalid_parameter(f"The JSON body must be an object. {SEND_HINT}")
    plain_b64 = "image_file_b64" in body  # remove.bg's plain base64, for image_data_uri
    return dict(_as_ours(list(body.items()))), plain_b64


def _check_json_names(body: dict[str, Any]) -> None:
    """One photo source, no unknown field, no null: else the 400 that says what to send."""
    sources = [name for name in ("image_url", "image_data_uri") if name in body]
    unknown = sorted(set(body) - JSON_FIELDS - {"channels"})
    if not sources:
        hint = f" Unknown field(s): {_suggest(unknown, JSON_KNOWN)}." if unknown else ""
        raise invalid_image(f'No image in the JSON body: send "image_url" or "image_data_uri".{hint} {SEND_HINT}')
    if unknown:
        raise invalid_parameter(f"Unknown JSON field(s): {_suggest(unknown, JSON_KNOWN)}. {SEND_HINT}")
    nulls = sorted(name for name, value in body.items() if value is None)
    if nulls:
        raise invalid_parameter(f"JSON field(s) {_names(nulls)} are null: leave a field out for its default.")
    if len(sources) > 1:
        raise invalid_parameter('Send either "image_url" or "image_data_uri", not both.')


def _text_field(body: dict[str, Any], name: str, refusal: str) -> str | None:
    """The string field taken out of the body (None when left out), or a 400 saying `refusal`."""
    value = body.pop(name, None)
    if value is not None and not isinstance(value, str):
        raise invalid_parameter(refusal)
    return value


def _url_field(body: dict[str, Any], name: str) -> str | None:
    """A URL field taken out of the body: a string of at most MAX_JSON_URL_CHARS (the fetch checks the rest)."""
    value = body.pop(name, None)
    if value is not None and (not isinstance(value, str) or len(value) > MAX_JSON_URL_CHARS):
        raise invalid_parameter(f'"{name}" must be an http(s) URL of at most {MAX_JSON_URL_CHARS} characters.')
    return value


def _plain_base64(value: object) -> bytes:
    """remove.bg's image_file_b64: the photo's bytes in base64 (a data URI is taken too)."""
    if isinstance(value, str) and value[:5].lower() == "data:":
        return decode_data_uri(value, "image_file_b64")
    hint = "image_file_b64 must be the photo's bytes in base64."
    if not isinstance(value, str):
        raise invalid_image(hint)
    try:
        return base64.b64decode("".join(value.split()), validate=True)
    except (binascii.Error, ValueError):
        raise invalid_image(f"image_file_b64 is not valid base64. {hint}") from None
