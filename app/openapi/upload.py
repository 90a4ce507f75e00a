"""The two upload operations of /openapi.json: POST /v2/rembg/ and POST /v2/rembg/mask/."""

from __future__ import annotations

from app.accounts import idempotency
from app.openapi import options as option_schemas
from app.openapi.shapes import INT_HEADER, JSON, REQUEST_ID, SECURITY, error_response
from app.removal.accept import ACCEPT_RULE
from app.removal.option_table import FLAG_RULE
from app.removal.respond import FOREGROUND_HEADERS, HEIGHT_HEADER, WIDTH_HEADER
from app.removal.submission import MAX_FIELD_BYTES
from app.settings import Settings

# The body is image/png; generators such as openapi-python-client return raw bytes only for
# application/octet-stream, so the same bytes are listed under that name as well, and sent as
# such when the Accept header prefers it (app/removal/accept.py ACCEPT_RULE).
PNG_MEDIA_TYPES = ("image/png", "application/octet-stream")
_BINARY = {"schema": {"type": "string", "format": "binary"}}
_ERROR_STATUSES = (400, 401, 402, 408, 409, 413, 422, 429, 500, 503)


def _resolutions(settings: Settings) -> list[str]:
    """Every operating resolution some model accepts, smallest first."""
    names = {r for spec in settings.models.values() for r in spec.prices()}
    return sorted(names, key=lambda r: int(r.split("x")[0]))


def _model_names(settings: Settings) -> list[str]:
    """The names a client may send: the models, and auto when it is configured."""
    return sorted(settings.models) + (["auto"] if settings.auto is not None else [])


def _success_headers(settings: Settings) -> JSON:
    return {
        "X-Request-ID": REQUEST_ID,
        "X-Credits-Charged": INT_HEADER,
        "X-Credits-Remaining": {
            "description": "The balance after this request (absent for an unlimited key).",
            **INT_HEADER,
        },
        "X-Model": {
            "description": "The model whose answer this is (model=auto: the one that ran last; `auto` on a "
            "replayed model=auto answer, whose kept body does not say which ran).",
            "schema": {"type": "string", "enum": _model_names(settings)},
        },
        "X-Mask-Confidence": {
            "description": option_schemas.CONFIDENCE["description"],
            "schema": {"type": "string", "example": "0.912"},
        },
        "X-Model-Escalated": {
            "description": "model=auto only: `true` when the first model's confidence was below the threshold "
            "and the stronger model's answer was given (charged at its price).",
            "schema": {"type": "string", "enum": ["true", "false"]},
        },
        "X-Operating-Resolution": {"schema": {"type": "string", "enum": _resolutions(settings)}},
        "X-RateLimit-Limit": INT_HEADER,
        "X-RateLimit-Remaining": INT_HEADER,
        "X-RateLimit-Reset": {"description": "Unix time when the window frees up.", **INT_HEADER},
        WIDTH_HEADER: {"description": "Width of the result image (px).", **INT_HEADER},
        HEIGHT_HEADER: {"description": "Height of the result image (px).", **INT_HEADER},
        **{
            name: {
                "description": f"Only after a crop: the {what} of the cropped rectangle (margin included) in the "
                "input photo's pixels, to place the result back on the photo (remove.bg's header).",
                **INT_HEADER,
            }
            for name, what in zip(FOREGROUND_HEADERS, ("left edge", "top edge", "width", "height"), strict=True)
        },
        idempotency.REPLAYED_HEADER: {
            "description": "`true` when this is a retry of a request already paid for (then X-Credits-Charged is 0).",
            "schema": {"type": "string", "enum": ["true"]},
        },
    }


def _idempotency_key() -> JSON:
    return {
        "name": idempotency.HEADER,
        "in": "header",
        "required": False,
        "description": "Retries with the same key (same account, image, model, endpoint) are charged once.",
        "schema": {"type": "string", "minLength": 1, "maxLength": 255},
    }


def _form(settings: Settings, mask: bool) -> JSON:
    image = (
        "The photo: JPEG, PNG, WebP, GIF (first frame), BMP, TIFF, HEIC/HEIF or AVIF. "
        f"At most {settings.max_body_bytes} bytes in the body, "
        f"{settings.max_pixels} pixels and {settings.max_side} px a side. "
        "EXIF orientation is applied." + option_schemas.IMAGE_URL_IN_FORM
    )
    resolution = (
        "The size the network runs at (`auto`, the default: the model's own). Each model accepts "
        "some of these (GET /v2/account lists them with their cost); another is a 400."
    )
    # Not required: a field image_url may stand instead (the parser answers 400 when neither is there).
    # Defaults a form may send back as they are (Swagger UI fills every field from them): "" is left out.
    fetched = {"type": "string", "maxLength": MAX_FIELD_BYTES, "default": ""}
    urls: JSON = {"image_url": {**fetched, "description": "Instead of `image`: fetch the photo from this URL."}}
    if not mask:
        urls["bg_image_url"] = {**fetched, "description": option_schemas.BG_IMAGE_URL}
    return {
        "schema": {
            "type": "object",
            "additionalProperties": False,
            "description": "The photo as the file part `image`, or its URL in `image_url`. " + FLAG_RULE,
            "properties": {
                "image": {"type": "string", "format": "binary", "description": image},
                **urls,
                "model": {"type": "string", "enum": _model_names(settings), "default": settings.default_model},
                "operating_resolution": {
                    "type": "string",
                    "enum": ["auto", *_resolutions(settings)],
                    "default": "auto",
                    "description": resolution,
                },
                **option_schemas.form_properties(mask),
            },
        },
        "encoding": {"image": {"contentType": "image/*, application/octet-stream"}},
    }


def _request_body(settings: Settings, mask: bool) -> JSON:
    return {
        "required": True,
        "content": {
            "multipart/form-data": _form(settings, mask),
            "application/json": {
                "schema": option_schemas.json_request(_model_names(settings), settings.default_model, mask),
                "example": option_schemas.json_example(mask),
            },
        },
    }


def _responses(settings: Settings, png: str) -> JSON:
    return {
        "200": {
            "description": png
            + " Sent as `image/png` unless `output_format` or a JSON answer is asked for. "
            + ACCEPT_RULE,
            "headers": _success_headers(settings),
            "content": {
                **{media_type: _BINARY for media_type in PNG_MEDIA_TYPES},
                "image/webp": _BINARY,
                "image/jpeg": _BINARY,
                "application/json": {"schema": option_schemas.json_answer()},
            },
        },
        **{str(status): error_response(status) for status in _ERROR_STATUSES},
    }


def upload_operation(settings: Settings, summary: str, png: str, mask: bool) -> JSON:
    return {
        "summary": summary,
        "security": SECURITY,
        "parameters": [_idempotency_key()],
        "requestBody": _request_body(settings, mask),
        "responses": _responses(settings, png),
    }
