"""The OpenAPI 3.1 description served at GET /openapi.json.

Written by hand, next to the code it describes, because the handlers are plain
Starlette functions with nothing to introspect. `operations()` is the one
list of documented operations: a new route adds its entry there, or to
`UNDOCUMENTED` (the slash-less aliases and the operators' routes, which clients
do not call). The contract tests run schemathesis against this document, so a
response the service gives but the document does not list fails the suite.

Shaped for client generators (tests/test_generated_client.py builds one with
openapi-python-client): one `Error` schema that every error response refers
to, tags, stable operationIds, the PNG answer also named
`application/octet-stream`, the name generators know for raw bytes.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from app.accounts import idempotency
from app.accounts.auth import API_KEY_HEADER, X_API_KEY_HEADER
from app.errors import ERROR_CODES, error_table
from app.openapi import options as option_schemas
from app.settings import Settings

JSON = dict[str, Any]

API_KEY_SCHEME = "ApiKey"
# Any one of these authenticates (app/accounts/auth.py); ApiKey is the documented one.
SECURITY_SCHEMES: JSON = {
    API_KEY_SCHEME: {"type": "apiKey", "in": "header", "name": API_KEY_HEADER, "description": "Your API key."},
    "XApiKey": {
        "type": "apiKey",
        "in": "header",
        "name": X_API_KEY_HEADER,
        "description": "The same key, as remove.bg clients send it.",
    },
    "Bearer": {"type": "http", "scheme": "bearer", "description": "The same key as `Authorization: Bearer <key>`."},
}
SECURITY = [{name: []} for name in SECURITY_SCHEMES]
_REQUEST_ID = {
    "description": "Id of this request; quote it to support.",
    "schema": {"type": "string", "pattern": "^req_"},
}
_RETRY_AFTER = {"description": "Seconds to wait before retrying.", "schema": {"type": "integer", "minimum": 1}}
_INT_HEADER = {"schema": {"type": "integer", "minimum": 0}}
# The body is image/png; generators such as openapi-python-client return raw bytes only for
# application/octet-stream, so the same answer is listed under that name as well.
PNG_MEDIA_TYPES = ("image/png", "application/octet-stream")
TAGS = [
    {"name": "Background removal", "description": "Upload a photo, get the cut-out or the mask as PNG bytes."},
    {"name": "Account", "description": "Balance, plan, rate limit and prices."},
]
# Answered but left out of the document: the aliases without the trailing slash (the same
# operations) and the operators' routes (probes, metrics, pages), which API clients do not call.
UNDOCUMENTED: frozenset[tuple[str, str]] = frozenset(
    {
        ("/v2/rembg", "post"),
        ("/v2/rembg/mask", "post"),
        ("/health", "get"),
        ("/ready", "get"),
        ("/metrics", "get"),
        ("/openapi.json", "get"),
        ("/docs", "get"),
        ("/demo", "get"),
    }
)

ERROR_SCHEMA: JSON = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["code", "message", "request_id"],
            "additionalProperties": False,
            "properties": {
                "code": {"type": "string", "description": "Stable, machine-readable."},
                "message": {"type": "string", "description": "For humans: what went wrong and what to send."},
                "request_id": {"type": "string", "pattern": "^req_"},
            },
        },
        "retry_after": {"type": "integer", "minimum": 1, "description": "Only on 429: seconds to wait."},
    },
}


def error_response(status: int) -> JSON:
    """The documented answer for one error status: its codes and their meanings, from ERROR_CODES."""
    codes = [code for code, spec in ERROR_CODES.items() if spec.status == status and spec.public]
    if not codes:
        raise ValueError(f"no public error code in ERROR_CODES has status {status}")
    headers: JSON = {"X-Request-ID": _REQUEST_ID}
    if any(ERROR_CODES[code].retry_after for code in codes):
        headers["Retry-After"] = _RETRY_AFTER
    # One schema by reference (a generator makes one Error class, not one per response); the
    # codes this status can carry are listed in the description, with their meanings.
    return {
        "description": "; ".join(f"`{code}`: {ERROR_CODES[code].meaning}" for code in codes) + ".",
        "headers": headers,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
    }


def json_response(description: str, schema: JSON, headers: JSON | None = None) -> JSON:
    return {
        "description": description,
        "headers": {"X-Request-ID": _REQUEST_ID, **(headers or {})},
        "content": {"application/json": {"schema": schema}},
    }


def _upload_operation(settings: Settings, summary: str, png: str, mask: bool) -> JSON:
    models = sorted(settings.models)
    binary = {"schema": {"type": "string", "format": "binary"}}
    resolutions = sorted(
        {r for spec in settings.models.values() for r in spec.prices()}, key=lambda r: int(r.split("x")[0])
    )
    success_headers = {
        "X-Request-ID": _REQUEST_ID,
        "X-Credits-Charged": _INT_HEADER,
        "X-Credits-Remaining": _INT_HEADER,
        "X-Model": {"schema": {"type": "string", "enum": models}},
        "X-Operating-Resolution": {"schema": {"type": "string", "enum": resolutions}},
        "X-RateLimit-Limit": _INT_HEADER,
        "X-RateLimit-Remaining": _INT_HEADER,
        "X-RateLimit-Reset": {"description": "Unix time when the window frees up.", **_INT_HEADER},
        idempotency.REPLAYED_HEADER: {
            "description": "`true` when this is a retry of a request already paid for (then X-Credits-Charged is 0).",
            "schema": {"type": "string", "enum": ["true"]},
        },
    }
    return {
        "summary": summary,
        "security": SECURITY,
        "parameters": [
            {
                "name": idempotency.HEADER,
                "in": "header",
                "required": False,
                "description": "Retries with the same key (same account, image, model, endpoint) are charged once.",
                "schema": {"type": "string", "minLength": 1, "maxLength": 255},
            }
        ],
        "requestBody": {
            "required": True,
            "content": {
                "multipart/form-data": {
                    "schema": {
                        "type": "object",
                        "required": ["image"],
                        "additionalProperties": False,
                        "properties": {
                            "image": {
                                "type": "string",
                                "format": "binary",
                                "description": (
                                    "The photo: JPEG, PNG, WebP, GIF (first frame), BMP, TIFF, HEIC/HEIF or AVIF. "
                                    f"At most {settings.max_body_bytes} bytes in the body, "
                                    f"{settings.max_pixels} pixels and {settings.max_side} px a side. "
                                    "EXIF orientation is applied." + option_schemas.IMAGE_URL_IN_FORM
                                ),
                            },
                            "model": {"type": "string", "enum": models, "default": settings.default_model},
                            "operating_resolution": {
                                "type": "string",
                                "enum": resolutions,
                                "description": (
                                    "The size the network runs at (default: the model's own). Each model accepts "
                                    "some of these (GET /v2/account lists them with their cost); another is a 400."
                                ),
                            },
                            **option_schemas.form_properties(mask),
                        },
                    },
                    "encoding": {"image": {"contentType": "image/*, application/octet-stream"}},
                },
                "application/json": {
                    "schema": option_schemas.json_request(models, settings.default_model, mask),
                    "example": option_schemas.json_example(mask),
                },
            },
        },
        "responses": {
            "200": {
                "description": png + " Sent as `image/png` unless `output_format` or a JSON answer is asked for.",
                "headers": success_headers,
                "content": {
                    **{media_type: binary for media_type in PNG_MEDIA_TYPES},
                    "image/webp": binary,
                    "image/jpeg": binary,
                    "application/json": {"schema": option_schemas.json_answer()},
                },
            },
            **{str(status): error_response(status) for status in (400, 401, 402, 408, 409, 413, 422, 429, 500, 503)},
        },
    }


def operations(settings: Settings) -> dict[str, dict[str, JSON]]:
    """Path -> method -> operation: every documented operation (the rest: UNDOCUMENTED)."""
    removal = {"tags": [TAGS[0]["name"]]}
    cutout = {
        **_upload_operation(
            settings,
            "Remove the background",
            "The cut-out: RGBA PNG at the input's displayed size; cropped, in another format, over a background "
            "or smaller as the options ask; JSON (`sync_mode` or `Accept: application/json`) with the image as a "
            "data URI.",
            mask=False,
        ),
        **removal,
        "operationId": "removeBackground",
    }
    mask = {
        **_upload_operation(
            settings,
            "Foreground mask",
            "The mask: grayscale PNG at the input's displayed size, white = subject (crop, format and size as asked).",
            mask=True,
        ),
        **removal,
        "operationId": "removeBackgroundMask",
    }
    account = {
        "summary": "Balance, plan, rate limit and model costs",
        "operationId": "getAccount",
        "tags": [TAGS[1]["name"]],
        "security": SECURITY,
        "responses": {
            "200": json_response("The caller's account.", {"$ref": "#/components/schemas/Account"}),
            **{str(status): error_response(status) for status in (401, 429, 500, 503)},
        },
    }
    return {"/v2/rembg/": {"post": cutout}, "/v2/rembg/mask/": {"post": mask}, "/v2/account": {"get": account}}


def _account_schema() -> JSON:
    price = {"cost": {"type": "integer"}, "mask_cost": {"type": "integer"}}
    cost = {
        "type": "object",
        "properties": {
            **price,
            "operating_resolution": {"type": "string", "description": "The default, e.g. 1024x1024."},
            "resolutions": {
                "type": "object",
                "description": "Each operating resolution the model accepts, with its cost.",
                "additionalProperties": {"type": "object", "properties": price},
            },
        },
    }
    option_costs = {
        "type": "object",
        "description": "Extra credits per option, added to the model's cost when a request uses it.",
        "additionalProperties": {"type": "integer", "minimum": 0},
    }
    return {
        "type": "object",
        "required": [
            "account_id",
            "credits",
            "plan",
            "rate_limit",
            "rate_limit_remaining",
            "rate_limit_reset",
            "models",
        ],
        "properties": {
            "account_id": {"type": "string"},
            "credits": {"type": "integer"},
            "plan": {"type": "string"},
            "rate_limit": {"type": "string", "examples": ["60/minute"]},
            "rate_limit_remaining": {"type": "integer", "minimum": 0},
            "rate_limit_reset": {"type": "integer", "description": "Unix time when the window frees up."},
            "models": {"type": "object", "additionalProperties": cost},
            "option_costs": option_costs,
        },
    }


def build(settings: Settings) -> JSON:
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Cutout",
            "version": "2",
            "description": (
                "Background removal: POST a photo as multipart form data with your `ApiKey` header; "
                "get PNG bytes, or a JSON error of one shape. Credits are charged only for work delivered.\n\n"
                "Error codes (no error is charged):\n\n" + error_table()
            ),
        },
        # Relative: whatever host serves this document (Swagger UI on /docs calls it there).
        "servers": [{"url": "/", "description": "The server this document comes from."}],
        "tags": TAGS,
        "paths": operations(settings),
        "components": {
            "securitySchemes": SECURITY_SCHEMES,
            "schemas": {"Error": ERROR_SCHEMA, "Account": _account_schema(), **option_schemas.COMPONENTS},
        },
    }


def endpoint(settings: Settings) -> Callable[[Request], Awaitable[Response]]:
    """GET /openapi.json: the document is built once, from the settings the app runs with."""
    body = JSONResponse(build(settings)).body

    async def openapi_json(request: Request) -> Response:
        return Response(body, media_type="application/json")

    return openapi_json
