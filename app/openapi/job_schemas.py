"""/openapi.json's schemas of asynchronous jobs and batches (app/jobs/): the Job, Batch and Webhook
components, `webhook_url`, and the body of `POST /v2/batches` (multipart or JSON)."""

from __future__ import annotations

from app.openapi import options as option_schemas
from app.openapi.shapes import ERROR_SCHEMA, JSON
from app.settings import Settings

STATUSES = ["queued", "running", "succeeded", "failed", "cancelled", "expired"]
WEBHOOK_URL: JSON = {
    "type": "string",
    "maxLength": 8192,
    "format": "uri",
    "description": "Makes the request asynchronous (202): when it ends, this URL receives a POST signed as "
    "Standard Webhooks says, with the secret `GET /v2/account` shows. The same address rules as `image_url`.",
}
BATCH_WEBHOOK_URL: JSON = {
    **WEBHOOK_URL,
    "description": "When each item ends, and when the whole batch has, this URL receives a POST signed as Standard "
    "Webhooks says, with the secret `GET /v2/account` shows. The same address rules as `image_url`.",
}
OUTPUT = {"$ref": "#/components/schemas/Output"}
_NULLABLE_TIME = {"type": ["number", "null"], "description": "Unix time."}


def _webhook_schema() -> JSON:
    attempt = {
        "type": "object",
        "properties": {
            "at": {"type": "number"},
            "status": {"type": ["integer", "null"], "description": "The target's HTTP status; null: no answer."},
            "error": {"type": ["string", "null"]},
            "duration_ms": {"type": "number"},
        },
    }
    return {
        "type": "object",
        "required": ["url", "state", "attempt_count", "attempts"],
        "properties": {
            "url": {"type": "string"},
            "state": {"type": "string", "description": "`pending`, `delivered`, or `failed` (retries given up)."},
            "attempt_count": {"type": "integer", "minimum": 0},
            "attempts": {"type": "array", "items": attempt, "description": "The latest attempts, oldest first."},
        },
    }


def job_schema() -> JSON:
    return {
        "type": "object",
        "required": ["id", "object", "status", "url", "output", "model", "credits", "created_at"],
        "properties": {
            "id": {"type": "string", "pattern": "^job_"},
            "object": {"type": "string", "description": "`job`."},
            "status": {"type": "string", "enum": STATUSES},
            "url": {"type": "string"},
            "output": OUTPUT,
            "model": {"type": "string"},
            "credits": {"type": "integer", "minimum": 0, "description": "Reserved at submission."},
            "credits_charged": {"type": "integer", "minimum": 0, "description": "Charged once delivered."},
            "created_at": {"type": "number"},
            "started_at": _NULLABLE_TIME,
            "finished_at": _NULLABLE_TIME,
            "expires_at": {"type": "number", "description": "Not run by then: expired, refunded."},
            "batch_id": {"type": ["string", "null"]},
            "runs": {"type": "integer", "minimum": 0},
            "position": {
                "type": "integer",
                "minimum": 0,
                "description": "Queued jobs (every account's) to be started before this one; 0: next (queued only).",
            },
            "index": {"type": "integer", "minimum": 0},
            "name": {"type": ["string", "null"]},
            "result_url": {"type": "string", "description": "Once succeeded."},
            "content_type": {"type": "string"},
            "file_size": {"type": "integer"},
            "error": {**ERROR_SCHEMA["properties"]["error"], "description": "Once failed: why (our error object)."},
            "webhook": {"$ref": "#/components/schemas/Webhook"},
        },
    }


def batch_schema() -> JSON:
    counts = {"type": "object", "properties": {status: {"type": "integer"} for status in STATUSES}}
    return {
        "type": "object",
        "required": ["id", "object", "status", "url", "items", "counts"],
        "properties": {
            "id": {"type": "string", "pattern": "^batch_"},
            "object": {"type": "string", "description": "`batch`."},
            "status": {
                "type": "string",
                "description": "`queued`, `running`, or `completed` once every item has ended (succeeded, failed, "
                "cancelled or expired).",
            },
            "url": {"type": "string"},
            "created_at": {"type": "number"},
            "completed_at": _NULLABLE_TIME,
            "counts": counts,
            "credits": {"type": "integer"},
            "credits_charged": {"type": "integer"},
            "items": {"type": "array", "items": {"$ref": "#/components/schemas/Job"}},
            "zip_url": {"type": "string", "description": "Once completed: the results as one ZIP."},
            "webhook": {"$ref": "#/components/schemas/Webhook"},
        },
    }


COMPONENTS: JSON = {
    "Job": job_schema(),
    "Batch": batch_schema(),
    "Webhook": _webhook_schema(),
    "Output": {"type": "string", "enum": ["cutout", "mask"], "description": "The cut-out, or the mask."},
}


def _batch_item() -> JSON:
    return {
        "type": "object",
        "description": "One item: `image_url` or `image_data_uri`, an optional `name`, and options that override "
        "the shared ones for this item.",
        "properties": {
            "image_url": {"type": "string"},
            "image_data_uri": {"type": "string"},
            "name": {"type": "string"},
            "output": OUTPUT,
        },
    }


SHARED = "Shared options (model, operating_resolution, output = cutout|mask, the option fields) apply to every item"


def _multipart_body(limit: int, models: str) -> JSON:
    return {
        "schema": {
            "type": "object",
            "required": ["images"],
            "properties": {
                # One binary here: the part is repeated per photo (an array of files trips generators).
                "images": {
                    "type": "string",
                    "format": "binary",
                    "description": f"A photo; repeat the part for each one, 1 to {limit} in all.",
                },
                "overrides": {
                    "type": "string",
                    "description": "JSON list, one object of options (or null) per image, in order.",
                },
                "webhook_url": BATCH_WEBHOOK_URL,
                "model": {"type": "string", "description": models},
                "output": OUTPUT,
            },
            "description": SHARED + ", as text fields.",
        },
        "encoding": {"images": {"contentType": "image/*, application/octet-stream"}},
    }


def _json_body(limit: int, models: str) -> JSON:
    return {
        "schema": {
            "type": "object",
            "required": ["items"],
            "properties": {
                "items": {"type": "array", "minItems": 1, "maxItems": limit, "items": _batch_item()},
                "webhook_url": BATCH_WEBHOOK_URL,
                "model": {"type": "string", "description": models},
                "output": OUTPUT,
            },
            "description": SHARED + " beside `items`.",
        },
        "example": {"items": [{"image_data_uri": option_schemas.example_data_uri(), "name": "a.png"}]},
    }


def batch_body(settings: Settings) -> JSON:
    """`POST /v2/batches`: the photos as repeated multipart parts, or JSON items."""
    limit = settings.batch_max_items
    models = "One of: " + ", ".join(sorted(settings.models)) + "."
    return {
        "required": True,
        "content": {
            "multipart/form-data": _multipart_body(limit, models),
            "application/json": _json_body(limit, models),
        },
    }
