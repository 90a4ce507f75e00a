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

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from app.errors import error_table
from app.openapi import jobs
from app.openapi import options as option_schemas
from app.openapi.shapes import ERROR_SCHEMA, JSON, SECURITY, SECURITY_SCHEMES, error_response, json_response
from app.openapi.upload import upload_operation
from app.settings import Settings

TAGS = [
    {"name": "Background removal", "description": "Upload a photo, get the cut-out or the mask as PNG bytes."},
    {"name": "Account", "description": "Balance, plan, rate limit and prices."},
    jobs.TAG,
]
# Answered but left out of the document: the aliases without the trailing slash (the same
# operations) and the operators' routes (probes, metrics, pages), which API clients do not call.
UNDOCUMENTED: frozenset[tuple[str, str]] = frozenset(
    {
        ("/v2/rembg", "post"),
        ("/v2/rembg/mask", "post"),
        ("/v2/account/", "get"),
        ("/", "get"),
        ("/health", "get"),
        ("/ready", "get"),
        ("/metrics", "get"),
        ("/openapi.json", "get"),
        ("/docs", "get"),
        ("/demo", "get"),
        ("/v2/batches/", "post"),
    }
)


def operations(settings: Settings) -> dict[str, dict[str, JSON]]:
    """Path -> method -> operation: every documented operation (the rest: UNDOCUMENTED)."""
    removal = {"tags": [TAGS[0]["name"]]}
    cutout = {
        **upload_operation(
            settings,
            "Remove the background",
            "The cut-out: RGBA PNG at the input's displayed size; cropped, in another format, over a background "
            "or smaller as the options ask; JSON (`sync_mode`, or an `Accept` that prefers JSON) with the image as "
            "a data URI.",
            mask=False,
        ),
        **removal,
        "operationId": "removeBackground",
    }
    mask = {
        **upload_operation(
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
    return {
        "/v2/rembg/": {"post": jobs.add_async(cutout, settings)},
        "/v2/rembg/mask/": {"post": jobs.add_async(mask, settings)},
        "/v2/account": {"get": account},
        **jobs.operations(settings),
    }


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
            "unlimited",
            "plan",
            "rate_limit",
            "rate_limit_remaining",
            "rate_limit_reset",
            "models",
        ],
        "properties": {
            "account_id": {"type": "string"},
            "credits": {"type": "integer"},
            "unlimited": {"type": "boolean", "description": "`true`: this key's requests are not charged."},
            "plan": {"type": "string"},
            "rate_limit": {"type": "string", "examples": ["60/minute"]},
            "rate_limit_remaining": {"type": "integer", "minimum": 0},
            "rate_limit_reset": {"type": "integer", "description": "Unix time when the window frees up."},
            "models": {"type": "object", "additionalProperties": cost},
            "option_costs": option_costs,
            "webhook_secret": {
                "type": "string",
                "pattern": "^whsec_",
                "description": "Signs this account's webhooks (Standard Webhooks: `whsec_` + base64 key).",
            },
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
            "schemas": {
                "Error": ERROR_SCHEMA,
                "Account": _account_schema(),
                **option_schemas.COMPONENTS,
                **jobs.COMPONENTS,
            },
        },
    }


def endpoint(settings: Settings) -> Callable[[Request], Awaitable[Response]]:
    """GET /openapi.json: the document is built once, from the settings the app runs with."""
    body = JSONResponse(build(settings)).body

    async def openapi_json(request: Request) -> Response:
        return Response(body, media_type="application/json")

    return openapi_json
