"""Pieces every operation of /openapi.json shares: security, the Error schema, error and JSON answers."""

from __future__ import annotations

from typing import Any

from app.accounts.auth import API_KEY_HEADER, X_API_KEY_HEADER
from app.errors import ERROR_CODES

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
    "Bearer": {
        "type": "http",
        "scheme": "bearer",
        "description": "The same key as `Authorization: Bearer <key>` (or fal's `Authorization: Key <key>`).",
    },
}
SECURITY: list[dict[str, list[str]]] = [{name: []} for name in SECURITY_SCHEMES]
REQUEST_ID = {
    "description": "Id of this request; quote it to support.",
    "schema": {"type": "string", "pattern": "^req_"},
}
RETRY_AFTER = {"description": "Seconds to wait before retrying.", "schema": {"type": "integer", "minimum": 1}}
INT_HEADER = {"schema": {"type": "integer", "minimum": 0}}
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
    headers: JSON = {"X-Request-ID": REQUEST_ID}
    if any(ERROR_CODES[code].retry_after for code in codes):
        headers["Retry-After"] = RETRY_AFTER
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
        "headers": {"X-Request-ID": REQUEST_ID, **(headers or {})},
        "content": {"application/json": {"schema": schema}},
    }
