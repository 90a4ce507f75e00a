"""Reading a `POST /v2/batches` body into the items to submit, each priced as its own request.

Multipart: the file part `images` repeated, shared options as text fields, `overrides` (a JSON
list, one object of options or null per image). JSON: `items` (each `image_url` or
`image_data_uri`, an optional `name`, options that override the shared ones), shared options
beside it. A malformed body is a 400 for the whole batch; an item that is not an image fails alone.
"""

from __future__ import annotations

import json
import posixpath
from dataclasses import dataclass
from typing import Any

import anyio
from starlette.datastructures import FormData, UploadFile
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request

from app.accounts.pricing import Output
from app.errors import ApiError, client_closed_request, invalid_parameter
from app.jobs.model import Payload
from app.jobs.service import Item, JobService
from app.removal import option_table, submission
from app.removal.accept import wants_json
from app.removal.submission import Submission

BATCH_TEXT_BYTES = 64 * 1024  # a multipart batch's text fields (its `overrides` JSON)
ITEM_FIELDS = frozenset({"model", "operating_resolution", "output"}) | (option_table.FIELDS - {"bg_image"})
SEND_HINT = (
    'Send multipart/form-data with the photos as file parts named "images" '
    '(curl: -F images=@a.jpg -F images=@b.jpg), or JSON {"items": [...]}.'
)


async def read(request: Request, jobs: JobService) -> tuple[list[Item], str | None]:
    """The batch's items, priced, and its webhook_url (not yet checked)."""
    media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media_type == "application/json":
        return await _read_json(request, jobs)
    if media_type == "multipart/form-data":
        return await _read_multipart(request, jobs)
    raise invalid_parameter(SEND_HINT)


# --- one item, either way ---


def _clean_name(name: str | None, index: int) -> str:
    base = posixpath.basename((name or "").replace("\\", "/")).strip()
    safe = "".join(c if c.isalnum() or c in "._- " else "_" for c in base)[:100].strip(" .")
    return safe or f"item-{index}"


def _at(err: ApiError, where: str) -> ApiError:
    """The error, its message saying which item it is about."""
    err.message = f"{where}{err.message}"
    return err


def _output_of(value: object, where: str) -> Output:
    if value in (None, "cutout"):
        return "cutout"
    if value == "mask":
        return "mask"
    raise invalid_parameter(f'{where}"output" must be "cutout" or "mask".')


async def _priced(jobs: JobService, sub: Submission, output: Output, accept_json: bool, where: str, name: str) -> Item:
    try:
        item = await jobs.price(sub, output, accept_json)
    except ApiError as err:
        raise _at(err, where) from None
    return Item(item.payload, item.output, item.model, item.credits, name=name)


# --- multipart ---


@dataclass(frozen=True)
class _Form:
    text: dict[str, str]
    uploads: list[tuple[str | None, bytes]]  # (file name, bytes) per photo, in order
    bg_image: bytes | None


async def _read_form(request: Request, limit: int) -> _Form:
    try:
        async with request.form(
            max_files=limit + 2, max_fields=len(ITEM_FIELDS) + 8, max_part_size=BATCH_TEXT_BYTES
        ) as form:
            return await _form_parts(form, limit)
    except HTTPException as exc:
        if "Too many files" in str(exc.detail):
            raise ApiError("too_many_items", f"A batch holds 1 to {limit} items.") from None
        raise invalid_parameter(f"The multipart body could not be read ({str(exc.detail).rstrip('.')}).") from None
    except ClientDisconnect:
        raise client_closed_request() from None


async def _form_parts(form: FormData, limit: int) -> _Form:
    images = form.getlist("images")
    text = {name: value for name, value in form.multi_items() if isinstance(value, str)}
    files = {name for name, value in form.multi_items() if isinstance(value, UploadFile)}
    stray = sorted(files - {"images", "bg_image"})
    if stray:
        raise invalid_parameter(f'Send the photos as file parts named "images"; got files in {stray[:5]}.')
    if not images or len(images) > limit:
        raise ApiError("too_many_items", f"A batch holds 1 to {limit} items; got {len(images)}.")
    bg = form.get("bg_image")
    bg_image = await bg.read() if isinstance(bg, UploadFile) else None
    uploads = [(part.filename, await part.read()) for part in images if isinstance(part, UploadFile)]
    if len(uploads) != len(images):
        raise invalid_parameter('"images" must be file parts, one per photo.')
    return _Form(text, uploads, bg_image)


def _overrides(text: str | None, count: int) -> list[Any]:
    """`overrides`: one object of options (or null) per image, in order; fewer is fine."""
    if text is None:
        return []
    try:
        overrides = json.loads(text)
    except ValueError:
        overrides = None
    if not isinstance(overrides, list) or len(overrides) > count:
        raise invalid_parameter('"overrides" must be a JSON list, one object (or null) per image, in order.')
    return overrides


async def _read_multipart(request: Request, jobs: JobService) -> tuple[list[Item], str | None]:
    form = await _read_form(request, jobs.settings.batch_max_items)
    text = dict(form.text)
    webhook_url = text.pop("webhook_url", None)
    overrides = _overrides(text.pop("overrides", None), len(form.uploads))
    unknown = sorted(set(text) - ITEM_FIELDS)
    if unknown:
        raise invalid_parameter(
            f'Unknown batch field(s): {unknown[:5]}. Options go as text fields, photos as "images".'
        )
    accept_json = wants_json(request.headers.get("accept", ""))
    items = []
    for index, (filename, data) in enumerate(form.uploads):
        override = overrides[index] if index < len(overrides) and overrides[index] is not None else {}
        where = f"images[{index}]: "
        if not isinstance(override, dict) or set(override) - ITEM_FIELDS:
            raise invalid_parameter(f"{where}an override is an object of option fields.")
        fields: dict[str, Any] = {**text, **override}
        output = _output_of(fields.pop("output", None), where)
        sub = Submission(
            image=data,
            image_url=None,
            model=fields.pop("model", None),
            operating_resolution=fields.pop("operating_resolution", None),
            fields=fields,
            bg_image=form.bg_image,
        )
        items.append(await _priced(jobs, sub, output, accept_json, where, _clean_name(filename, index)))
    return items, webhook_url


# --- JSON ---


def _read_json_items(raw: bytes, limit: int) -> tuple[list[tuple[int, dict[str, Any] | ApiError]], dict[str, Any]]:
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise invalid_parameter("The JSON body could not be parsed.") from None
    if not isinstance(body, dict) or not isinstance(body.get("items"), list):
        raise invalid_parameter(
            'Send {"items": [{"image_url": ...} or {"image_data_uri": ...}, ...]} and shared options.'
        )
    items = body.pop("items")
    if not items or len(items) > limit:
        raise ApiError("too_many_items", f"A batch holds 1 to {limit} items; got {len(items)}.")
    return list(enumerate(items)), body


async def _read_json(request: Request, jobs: JobService) -> tuple[list[Item], str | None]:
    try:
        raw = await request.body()
    except ClientDisconnect:
        raise client_closed_request() from None
    entries, shared = await anyio.to_thread.run_sync(_read_json_items, raw, jobs.settings.batch_max_items)
    nulls = sorted(name for name, value in shared.items() if value is None)
    if nulls:
        raise invalid_parameter(f"JSON field(s) {nulls[:5]} are null: leave a field out for its default.")
    webhook_url = shared.pop("webhook_url", None)
    if webhook_url is not None and not isinstance(webhook_url, str):
        raise invalid_parameter('"webhook_url" must be an http(s) URL.')
    output_shared = shared.pop("output", None)
    accept_json = wants_json(request.headers.get("accept", ""))
    items = [await _json_item(jobs, index, entry, shared, output_shared, accept_json) for index, entry in entries]
    return items, webhook_url


async def _json_item(
    jobs: JobService, index: int, entry: object, shared: dict[str, Any], output_shared: object, accept_json: bool
) -> Item:
    where = f"items[{index}]: "
    if not isinstance(entry, dict):
        raise invalid_parameter(f'{where}an item is an object with "image_url" or "image_data_uri".')
    entry = dict(entry)
    if entry.get("name", "") is None or entry.get("output", "") is None:
        raise invalid_parameter(f"{where}null fields: leave a field out for its default.")
    name = entry.pop("name", None)
    if name is not None and not isinstance(name, str):
        raise invalid_parameter(f'{where}"name" must be a string: the file name its result gets in the ZIP.')
    output = _output_of(entry.pop("output", output_shared), where)
    try:
        sub = submission._parse_json(json.dumps({**shared, **entry}).encode())
    except ApiError as err:
        if err.code != "invalid_image":
            raise _at(err, where) from None
        # Not an image (or no image): this item fails alone, nothing reserved for it.
        empty = Payload(None, None, None, {}, None, None, False)
        return Item(empty, output, "", 0, error=_at(err, where), name=_clean_name(name, index))
    if sub.webhook_url is not None:
        raise invalid_parameter(f'{where}"webhook_url" is the batch\'s: send it once, beside "items".')
    return await _priced(jobs, sub, output, accept_json, where, _clean_name(name, index))
