"""/openapi.json for asynchronous jobs and batches (app/jobs/): the Prefer header, `webhook_url`
and the 202 answer the upload operations gain, the job and batch routes, and the webhook as an
OpenAPI callback. Their schemas: app/openapi/job_schemas.py."""

from __future__ import annotations

from app.openapi import options as option_schemas
from app.openapi.job_schemas import COMPONENTS as COMPONENTS
from app.openapi.job_schemas import WEBHOOK_URL, batch_body
from app.openapi.shapes import JSON, REQUEST_ID, SECURITY, error_response, json_response
from app.settings import Settings

TAG = {
    "name": "Jobs and batches",
    "description": "Asynchronous requests: 202 at once, the result later (poll it, or get a signed webhook).",
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


EVENT_TYPES = {"job": ["job.succeeded", "job.failed", "job.cancelled", "job.expired"], "batch": ["batch.completed"]}
SIGNED: JSON = {
    "webhook-id": {"description": "The message id: the same on every retry.", "schema": {"type": "string"}},
    "webhook-timestamp": {"description": "Unix seconds of this attempt.", "schema": {"type": "integer"}},
    "webhook-signature": {
        "description": "`v1,` + base64 HMAC-SHA256 of `{webhook-id}.{webhook-timestamp}.{body}` with the "
        "account's secret (the base64 after `whsec_`).",
        "schema": {"type": "string", "pattern": "^v1,"},
    },
}
RETRIED = (
    "Retried with exponential backoff (`webhook_backoff_s`, doubling) for `webhook_retry_s` until a 2xx; "
    "each attempt is recorded on the "
)


def _event(kind: str) -> JSON:
    return {
        "type": "object",
        "required": ["type", "data", "timestamp"],
        "properties": {
            "type": {"type": "string", "enum": EVENT_TYPES[kind]},
            "timestamp": {"type": "string"},
            "data": {"$ref": f"#/components/schemas/{kind.capitalize()}"},
        },
    }


def _callback(kind: str, summary: str, description: str) -> JSON:
    return {
        "{$request.body#/webhook_url}": {
            "post": {
                "summary": summary,
                "description": description,
                "parameters": [
                    {"name": name, "in": "header", "required": True, **spec} for name, spec in SIGNED.items()
                ],
                "requestBody": {"required": True, "content": {"application/json": {"schema": _event(kind)}}},
                "responses": {"2XX": {"description": "Delivered."}},
            }
        }
    }


def callbacks(kind: str) -> JSON:
    """The webhooks: a job's end is posted to its `webhook_url`; a batch's gets each item's end, then its own."""
    if kind == "job":
        return {"jobEnded": _callback("job", "The job ended", RETRIED + "job.")}
    return {
        "itemEnded": _callback(
            "job", "One of the batch's items ended", "Sent for each item, as for a single job. " + RETRIED + "item."
        ),
        "batchEnded": _callback("batch", "The batch ended (every item has)", RETRIED + "batch."),
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


def _create_batch(settings: Settings) -> JSON:
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
        "requestBody": batch_body(settings),
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
    return create


def _job_paths() -> dict[str, dict[str, JSON]]:
    job = {"$ref": "#/components/schemas/Job"}
    result_types = ("image/png", "application/octet-stream", "image/webp", "image/jpeg", "application/json")
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
    }


def _batch_paths() -> dict[str, dict[str, JSON]]:
    batch = {"$ref": "#/components/schemas/Batch"}
    return {
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


def operations(settings: Settings) -> dict[str, dict[str, JSON]]:
    """The paths of jobs and batches, in the order the document lists them."""
    return {**_job_paths(), "/v2/batches": {"post": _create_batch(settings)}, **_batch_paths()}


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
