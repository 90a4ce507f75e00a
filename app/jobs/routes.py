"""The HTTP side of asynchronous jobs and batches.

    POST /v2/rembg/ | /v2/rembg/mask/ with `Prefer: respond-async` or a `webhook_url` -> 202 job
    GET /v2/jobs/{id}, GET /v2/jobs/{id}/result, DELETE /v2/jobs/{id}
    POST /v2/batches (multipart `images` files, or JSON `items`: app/jobs/batch_input.py) -> 202 batch
    GET /v2/batches/{id}, GET /v2/batches/{id}/zip, DELETE /v2/batches/{id}

A job or batch of another account answers 404 like an unknown one.
"""

from __future__ import annotations

import hashlib
import io
import posixpath
import zipfile
from typing import Any

import anyio
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from app.accounts import idempotency
from app.accounts.auth import authenticate
from app.accounts.pricing import Output
from app.errors import ApiError
from app.http.context import request_id_of
from app.jobs import batch_input, webhooks
from app.jobs.engine import IdempotencyConflict
from app.jobs.model import Batch, Job, now
from app.jobs.service import Item, JobService
from app.removal.accept import wants_json
from app.removal.submission import Submission
from app.services import services
from app.store import Account

EXTENSIONS = {"image/png": "png", "image/webp": "webp", "image/jpeg": "jpg", "application/json": "json"}


def wants_async(request: Request) -> bool:
    """`Prefer: respond-async` (RFC 7240), among other preferences or with parameters."""
    for header in request.headers.getlist("prefer"):
        for preference in header.split(","):
            if preference.split(";")[0].split("=")[0].strip().lower() == "respond-async":
                return True
    return False


def _jobs(request: Request) -> JobService:
    jobs = services(request).jobs
    assert jobs is not None
    return jobs


def not_found(kind: str, ref: str) -> ApiError:
    return ApiError(
        "job_not_found",
        f"No {kind} {ref[:60]!r} for this API key: unknown, another account's, or removed after its retention time.",
    )


async def _idempotency(
    request: Request, account: Account, items: list[Item], kind: str, webhook_url: str | None
) -> tuple[str, str, float] | None:
    key = idempotency.client_key(request)
    if key is None:
        return None

    def fingerprint() -> str:
        digest = hashlib.sha256(f"{kind}\n{webhook_url}\n".encode())
        for item in items:
            digest.update(f"{item.output}\n{item.payload.meta()}\n{item.name}\n".encode())
            digest.update(hashlib.sha256(item.payload.image or b"").digest())
            digest.update(hashlib.sha256(item.payload.bg_image or b"").digest())
        return digest.hexdigest()

    window = services(request).settings.idempotency_window_s
    return idempotency.idempotency_digest(account.id, key), await anyio.to_thread.run_sync(fingerprint), window


async def _submit(
    request: Request, account: Account, items: list[Item], *, batch: bool, webhook_url: str | None
) -> tuple[str, str, bool]:
    jobs = _jobs(request)
    total = sum(item.credits for item in items if item.error is None)
    if total > account.credits and not account.unlimited:
        noun = f"This batch of {len(items)} items costs" if batch else "This job costs"
        raise ApiError(
            "insufficient_credits",
            f"{noun} {total} credits and the account has {account.credits}. Top up to continue; nothing was run.",
        )
    idem = await _idempotency(request, account, items, "batch" if batch else "job", webhook_url)
    try:
        return await jobs.submit(
            account, items, request_id=request_id_of(request), batch=batch, webhook_url=webhook_url, idempotency=idem
        )
    except IdempotencyConflict:
        raise ApiError(
            "idempotency_key_reused",
            "This Idempotency-Key was used for a different submission. Use a new key for a new request.",
        ) from None


def _accepted(body: dict[str, Any], location: str, replayed: bool) -> JSONResponse:
    headers = {"Location": location, "Preference-Applied": "respond-async"}
    if replayed:
        headers[idempotency.REPLAYED_HEADER] = "true"
    return JSONResponse(body, status_code=202, headers=headers)


async def submit_single(request: Request, account: Account, sub: Submission, output: Output) -> Response:
    """A rembg request answered 202 at once and run later (called by app/routes/rembg.py)."""
    jobs = _jobs(request)
    webhook_url = await webhooks.check_target(sub.webhook_url, jobs.settings) if sub.webhook_url else None
    item = await jobs.price(sub, output, wants_json(request.headers.get("accept", "")))
    kind, ref, replayed = await _submit(request, account, [item], batch=False, webhook_url=webhook_url)
    job = await jobs.engine.get(ref)
    if job is None or kind != "job":
        raise not_found("job", ref)
    return _accepted(job.public(await jobs.engine.position(job)), f"/v2/jobs/{job.id}", replayed)


async def _own_job(request: Request) -> tuple[JobService, Job]:
    svc = services(request)
    account = await authenticate(request, svc.store, svc.limits)
    jobs = _jobs(request)
    job_id = request.path_params["job_id"]
    job = await jobs.engine.get(job_id)
    if job is None or job.account_id != account.id:
        raise not_found("job", job_id)
    if job.status == "queued" and job.deadline < now():
        await jobs.housekeeping()
        job = await jobs.engine.get(job_id) or job
    return jobs, job


async def job(request: Request) -> Response:
    """GET or DELETE /v2/jobs/{job_id}: one route, so that a 405 lists both methods."""
    return await (cancel_job(request) if request.method == "DELETE" else get_job(request))


async def batch(request: Request) -> Response:
    """GET or DELETE /v2/batches/{batch_id}."""
    return await (cancel_batch(request) if request.method == "DELETE" else get_batch(request))


async def get_job(request: Request) -> JSONResponse:
    jobs, job = await _own_job(request)
    position = await jobs.engine.position(job) if job.status == "queued" else None
    return JSONResponse(job.public(position))


async def get_result(request: Request) -> Response:
    jobs, job = await _own_job(request)
    if job.status != "succeeded":
        detail = f": {job.error['message']}" if job.error else ""
        raise ApiError("result_not_ready", f"Job {job.id} is {job.status}; it has no result{detail}")
    body = await jobs.engine.get_result(job.id)
    if body is None:
        raise not_found("result of job", job.id)
    return Response(body, media_type=job.media_type, headers={"X-Model": job.model})


async def cancel_job(request: Request) -> JSONResponse:
    jobs, job = await _own_job(request)
    if not await jobs.cancel(job):
        current = await jobs.engine.get(job.id) or job
        raise ApiError("job_not_cancellable", f"Job {job.id} is {current.status}: only a queued job can be cancelled.")
    return JSONResponse((await jobs.engine.get(job.id) or job).public())


# --- batches ---


async def create_batch(request: Request) -> Response:
    svc = services(request)
    account = await authenticate(request, svc.store, svc.limits)
    rate = await svc.limits.hit(account)
    with rate.on_errors():
        jobs = _jobs(request)
        items, webhook_url = await batch_input.read(request, jobs)
        if webhook_url is not None:
            webhook_url = await webhooks.check_target(webhook_url, jobs.settings)
        kind, ref, replayed = await _submit(request, account, items, batch=True, webhook_url=webhook_url)
        batch = await jobs.engine.get_batch(ref)
        if batch is None or kind != "batch":
            raise not_found("batch", ref)
        body = batch.public(await jobs.engine.get_many(batch.job_ids))
    response = _accepted(body, f"/v2/batches/{batch.id}", replayed)
    response.headers.update(rate.headers())
    return response


async def _own_batch(request: Request) -> tuple[JobService, Batch, list[Job]]:
    svc = services(request)
    account = await authenticate(request, svc.store, svc.limits)
    jobs = _jobs(request)
    batch_id = request.path_params["batch_id"]
    batch = await jobs.engine.get_batch(batch_id)
    if batch is None or batch.account_id != account.id:
        raise not_found("batch", batch_id)
    items = await jobs.engine.get_many(batch.job_ids)
    if not items:  # every item removed after its retention time: the batch's own record is about to go
        raise not_found("batch", batch_id)
    return jobs, batch, items


async def get_batch(request: Request) -> JSONResponse:
    _, batch, items = await _own_batch(request)
    return JSONResponse(batch.public(items))


async def cancel_batch(request: Request) -> JSONResponse:
    jobs, batch, items = await _own_batch(request)
    cancelled = [job for job in items if job.status == "queued" and await jobs.cancel(job)]
    if not cancelled:
        raise ApiError("job_not_cancellable", f"Batch {batch.id} has no queued item left to cancel.")
    return JSONResponse(batch.public(await jobs.engine.get_many(batch.job_ids)))


async def batch_zip(request: Request) -> Response:
    jobs, batch, items = await _own_batch(request)
    if not all(job.terminal for job in items):
        raise ApiError("result_not_ready", f"Batch {batch.id} is still running; its ZIP is ready once every item ends.")
    results = [(job, await jobs.engine.get_result(job.id)) for job in items if job.status == "succeeded"]

    def build() -> bytes:
        buffer = io.BytesIO()
        seen: set[str] = set()
        with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
            for job, body in results:
                if body is None:
                    continue
                stem = posixpath.splitext(job.name or f"item-{job.index}")[0]
                name = f"{stem}.{EXTENSIONS.get(job.media_type or '', 'bin')}"
                if name in seen:
                    name = f"{job.index:04d}-{name}"
                seen.add(name)
                archive.writestr(name, body)
        return buffer.getvalue()

    data = await anyio.to_thread.run_sync(build)
    return Response(
        data,
        media_type="application/zip",
        headers={"Content-Disposition": f'attachment; filename="{batch.id}.zip"'},
    )
