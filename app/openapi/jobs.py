"""/openapi.json for asynchronous jobs and batches (app/jobs/): the Prefer header, `webhook_url`
and the 202 answer the upload operations gain, the job and batch routes, their schemas, and
the webhook as an OpenAPI callback."""

from __future__ import annotations

from app.openapi import options as option_schemas
from app.openapi.shapes import ERROR_SCHEMA, JSON, REQUEST_ID, SECURITY, error_response, json_response
from app.settings import Settings

TAG = {
    "name": "Jobs and batches",
    "description": "Asynchronous requests: 202 at once, the result later (poll it, or get a signed webhook).",
}
STATUSES = ["queued", "running", "succeeded", "failed", "cancelled", "expired"]
WEBHOOK_URL: JSON = {
    "type": "string",
    "maxLength": 8192,
    "format": "uri",
    "description": "Makes the request asynchronous (202): when it ends, this URL receives a POST signed as "
    "Standard Webhooks says, with the secret `GET /v2/account` shows. The same address rules as `image_url`.",
}
PREFER: JSON = {
    "name": "Prefer",
    "in": "header",
    "required": False,
    "description": "`respond-async` (RFC 7240): answer 202 with a job at once; run the request later. "
    "Other preferences are ignored, as RFC 7240 says.",
    "schema": {"type": "string", "examples": ["respond-async"]},
}
LOCATION = {"description": "The job's (or batch's) status URL.", "schema": {"type": "string"}}
_ID = {"type": "string"}
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
            "position": {"type": "integer", "minimum": 0, "description": "Queued jobs ahead (queued only)."},
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


def _event(kind: str) -> JSON:
    return {
        "type": "object",
        "required": ["type", "data", "timestamp"],
        "properties": {
            "type": {"type": "string", "examples": [f"{kind}.succeeded" if kind == "job" else "batch.completed"]},
            "timestamp": {"type": "string"},
            "data": {"$ref": f"#/components/schemas/{kind.capitalize()}"},
        },
    }


def callbacks(kind: str) -> JSON:
    """The webhook: POST to `webhook_url` when the job (or the batch) ends."""
    signed = {
        "webhook-id": {"description": "The message id: the same on every retry.", "schema": {"type": "string"}},
        "webhook-timestamp": {"description": "Unix seconds of this attempt.", "schema": {"type": "integer"}},
        "webhook-signature": {
            "description": "`v1,` + base64 HMAC-SHA256 of `{webhook-id}.{webhook-timestamp}.{body}` with the "
            "account's secret (the base64 after `whsec_`).",
            "schema": {"type": "string", "pattern": "^v1,"},
        },
    }
    return {
        f"{kind}Ended": {
            "{$request.body#/webhook_url}": {
                "post": {
                    "summary": f"The {kind} ended",
                    "description": "Retried with exponential backoff (`webhook_backoff_s`, doubling) for "
                    "`webhook_retry_s` until a 2xx; each attempt is recorded on the "
                    f"{kind}.",
                    "parameters": [
                        {"name": name, "in": "header", "required": True, **spec} for name, spec in signed.items()
                    ],
                    "requestBody": {"required": True, "content": {"application/json": {"schema": _event(kind)}}},
                    "responses": {"2XX": {"description": "Delivered."}},
                }
            }
        }
    }


LINKS = {
    "job": {"getJob": "GetJob", "cancelJob": "CancelJob", "getJobResult": "GetJobResult"},
    "batch": {"getBatch": "GetBatch", "cancelBatch": "CancelBatch", "getBatchZip": "GetBatchZip"},
}


def accepted(kind: str) -> JSON:
    schema = {"$ref": f"#/components/schemas/{kind.capitalize()}"}
    answer = json_response(
        f"Accepted: the {kind}, to be run later. `Location` is its status URL.",
        schema,
        {"Location": LOCATION, "Preference-Applied": {"schema": {"type": "string", "enum": ["respond-async"]}}},
    )
    answer["links"] = {
        name: {"operationId": op, "parameters": {f"{kind}_id": "$response.body#/id"}}
        for op, name in LINKS[kind].items()
    }
    return answer


def _own(kind: str, summary: str, response: JSON, errors: tuple[int, ...], op: str) -> JSON:
    return {
        "summary": summary,
        "operationId": op,
        "tags": [TAG["name"]],
        "security": SECURITY,
        "parameters": [{"name": f"{kind}_id", "in": "path", "required": True, "schema": _ID}],
        "responses": {"200": response, **{str(status): error_response(status) for status in errors}},
    }


def _binary(description: str, media_types: tuple[str, ...]) -> JSON:
    content: JSON = {media: {"schema": {"type": "string", "format": "binary"}} for media in media_types}
    if "application/json" in content:  # the synchronous route's JSON answer (sync_mode, Accept)
        content["application/json"] = {"schema": option_schemas.json_answer()}
    return {"description": description, "headers": {"X-Request-ID": REQUEST_ID}, "content": content}


def _batch_body(settings: Settings) -> JSON:
    limit = settings.batch_max_items
    models = "One of: " + ", ".join(sorted(settings.models)) + "."
    shared = "Shared options (model, operating_resolution, output = cutout|mask, the option fields) apply to every item"
    item = {
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
    return {
        "required": True,
        "content": {
            "multipart/form-data": {
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
                        "webhook_url": WEBHOOK_URL,
                        "model": {"type": "string", "description": models},
                        "output": OUTPUT,
                    },
                    "description": shared + ", as text fields.",
                },
                "encoding": {"images": {"contentType": "image/*, application/octet-stream"}},
            },
            "application/json": {
                "schema": {
                    "type": "object",
                    "required": ["items"],
                    "properties": {
                        "items": {"type": "array", "minItems": 1, "maxItems": limit, "items": item},
                        "webhook_url": WEBHOOK_URL,
                        "model": {"type": "string", "description": models},
                        "output": OUTPUT,
                    },
                    "description": shared + " beside `items`.",
                },
                "example": {"items": [{"image_data_uri": option_schemas.example_data_uri(), "name": "a.png"}]},
            },
        },
    }


def operations(settings: Settings) -> dict[str, dict[str, JSON]]:
    job = {"$ref": "#/components/schemas/Job"}
    batch = {"$ref": "#/components/schemas/Batch"}
    result_types = ("image/png", "application/octet-stream", "image/webp", "image/jpeg", "application/json")
    create: JSON = {
        "summary": "Submit a batch",
        "description": "Many photos at once, each run as a job; 402 before anything runs if the balance does not "
        "cover every item; an item that is not an image (or whose URL fails) fails alone, refunded.",
        "operationId": "createBatch",
        "tags": [TAG["name"]],
        "security": SECURITY,
        "parameters": [
            {
                "name": "Idempotency-Key",
                "in": "header",
                "required": False,
                "schema": {"type": "string", "minLength": 1, "maxLength": 255},
                "description": "A retry with the same key returns the same batch, charged once.",
            }
        ],
        "requestBody": _batch_body(settings),
        "responses": {
            "202": accepted("batch"),
            **{str(status): error_response(status) for status in (400, 401, 402, 408, 413, 422, 429, 500, 503)},
        },
    }
    if settings.fetch_enabled:
        create["callbacks"] = callbacks("batch")
    else:
        for content in create["requestBody"]["content"].values():
            del content["schema"]["properties"]["webhook_url"]
    return {
        "/v2/jobs/{job_id}": {
            "get": _own("job", "A job's status", json_response("The job.", job), (401, 404, 500, 503), "getJob"),
            "delete": _own(
                "job",
                "Cancel a queued job (refunded)",
                json_response("The job, cancelled.", job),
                (401, 404, 409, 500, 503),
                "cancelJob",
            ),
        },
        "/v2/jobs/{job_id}/result": {
            "get": _own(
                "job",
                "A succeeded job's result",
                _binary("The result, in the format asked for.", result_types),
                (401, 404, 409, 500, 503),
                "getJobResult",
            )
        },
        "/v2/batches": {"post": create},
        "/v2/batches/{batch_id}": {
            "get": _own(
                "batch",
                "A batch's status, item by item",
                json_response("The batch.", batch),
                (401, 404, 500, 503),
                "getBatch",
            ),
            "delete": _own(
                "batch",
                "Cancel a batch's queued items (refunded)",
                json_response("The batch.", batch),
                (401, 404, 409, 500, 503),
                "cancelBatch",
            ),
        },
        "/v2/batches/{batch_id}/zip": {
            "get": _own(
                "batch",
                "A completed batch's results as one ZIP",
                _binary("The ZIP.", ("application/zip", "application/octet-stream")),
                (401, 404, 409, 500, 503),
                "getBatchZip",
            )
        },
    }


def add_async(operation: JSON, settings: Settings) -> JSON:
    """An upload operation that may also answer 202 (Prefer: respond-async, or a webhook_url).
    A server that makes no outbound request (`fetch_enabled` off) takes no webhook_url."""
    if not settings.fetch_enabled:
        return {
            **operation,
            "parameters": [*operation["parameters"], PREFER],
            "responses": {**operation["responses"], "202": accepted("job")},
        }
    body = operation["requestBody"]["content"]
    body["multipart/form-data"]["schema"]["properties"]["webhook_url"] = WEBHOOK_URL
    body["application/json"]["schema"]["properties"]["webhook_url"] = WEBHOOK_URL
    return {
        **operation,
        "parameters": [*operation["parameters"], PREFER],
        "responses": {**operation["responses"], "202": accepted("job")},
        "callbacks": callbacks("job"),
    }
