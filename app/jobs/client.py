"""`python -m app batch FOLDER`: send a folder of photos to a Cutout server as batches, with a
progress bar, writing the cut-outs side by side in an output folder.

Resumable: the output folder keeps `.cutout-batch.json` (each photo's job id). A rerun skips the
photos whose cut-out is there, fetches those already submitted, and submits the rest. Each chunk
is submitted with an Idempotency-Key made from its photos, so a submission whose answer was lost
(interrupted there) is not charged twice: the server answers the batch it already has.
"""

from __future__ import annotations

import hashlib
import json
import mimetypes
import secrets
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from tqdm import tqdm

PHOTO_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff", ".heic", ".heif", ".avif"}
EXTENSIONS = {"image/png": ".png", "image/webp": ".webp", "image/jpeg": ".jpg", "application/json": ".json"}
STATE = ".cutout-batch.json"
POLL_S = 1.0


class ClientError(Exception):
    pass


def _request(
    url: str, key: str, method: str = "GET", body: bytes | None = None, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(url, data=body, method=method, headers={"ApiKey": key, **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=300) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), err.read()
    except OSError as err:
        raise ClientError(f"{url}: {err}") from None


def _json(status: int, body: bytes, what: str) -> dict[str, Any]:
    try:
        document = json.loads(body)
    except ValueError:
        raise ClientError(f"{what}: HTTP {status}, not JSON") from None
    if status >= 400:
        error = document.get("error", {})
        raise ClientError(f"{what}: HTTP {status} {error.get('code')}: {error.get('message')}")
    return dict(document)


def _multipart(files: list[Path], fields: dict[str, str]) -> tuple[bytes, str]:
    boundary = "cutout-" + secrets.token_hex(12)
    parts: list[bytes] = []
    for name, value in fields.items():
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode())
    for path in files:
        kind = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        filename = path.name.replace('"', "_")
        head = f'--{boundary}\r\nContent-Disposition: form-data; name="images"; filename="{filename}"\r\n'
        parts.append(f"{head}Content-Type: {kind}\r\n\r\n".encode() + path.read_bytes() + b"\r\n")
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


def _idempotency_key(files: list[Path], fields: dict[str, str]) -> str:
    digest = hashlib.sha256(json.dumps(fields, sort_keys=True).encode())
    for path in files:
        stat = path.stat()
        digest.update(f"{path.name}\n{stat.st_size}\n{stat.st_mtime_ns}\n".encode())
    return "folder-" + digest.hexdigest()[:48]


def _output_path(out: Path, photo: str, content_type: str | None) -> Path:
    return out / (Path(photo).stem + EXTENSIONS.get(content_type or "", ".bin"))


class _State:
    """`.cutout-batch.json` in the output folder: each submitted photo's job id, until its result is written."""

    def __init__(self, out: Path) -> None:
        self.path = out / STATE
        state: dict[str, Any] = json.loads(self.path.read_text()) if self.path.exists() else {}
        self.document = state
        self.jobs: dict[str, str] = state.setdefault("jobs", {})  # photo name -> job id

    def save(self) -> None:
        self.path.write_text(json.dumps(self.document, indent=1))

    def done(self, photo: str) -> None:
        del self.jobs[photo]
        self.save()

    def close(self) -> None:
        if not self.jobs:
            self.path.unlink(missing_ok=True)


def run_batch(
    folder: Path, out: Path, url: str, key: str, fields: dict[str, str], chunk: int, progress: bool = True
) -> int:
    """Returns how many photos failed (0: every cut-out is in `out`)."""
    photos = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in PHOTO_SUFFIXES)
    out.mkdir(parents=True, exist_ok=True)
    state = _State(out)
    done = {p.name for p in photos if any(out.glob(Path(p.name).stem + ".*")) and p.name not in state.jobs}
    bar = tqdm(total=len(photos), unit="photo", disable=not progress, initial=len(done))
    todo = [p for p in photos if p.name not in state.jobs and p.name not in done]
    for start in range(0, len(todo), chunk):
        _submit_chunk(todo[start : start + chunk], url, key, fields, state)
    failed = _collect(out, url, key, state, bar)
    bar.close()
    state.close()
    for line in failed:
        print(line, file=sys.stderr)
    return len(failed)


def _submit_chunk(part: list[Path], url: str, key: str, fields: dict[str, str], state: _State) -> None:
    body, content_type = _multipart(part, fields)
    headers = {"Content-Type": content_type, "Idempotency-Key": _idempotency_key(part, fields)}
    status, _, answer = _request(url + "/v2/batches", key, "POST", body, headers)
    batch = _json(status, answer, "submitting a batch")
    for path, item in zip(part, batch["items"], strict=True):
        state.jobs[path.name] = item["id"]
    state.save()


def _collect(out: Path, url: str, key: str, state: _State, bar: Any) -> list[str]:
    """Polls every submitted job until it has ended, writing each result; the failures, one line each."""
    failed: list[str] = []
    while state.jobs:
        for photo, job_id in list(state.jobs.items()):
            outcome = _outcome(out, url, key, photo, job_id)
            if outcome == "running":
                continue
            if outcome is not None:
                failed.append(outcome)
            state.done(photo)
            bar.update(1)
        if state.jobs:
            time.sleep(POLL_S)
    return failed


def _outcome(out: Path, url: str, key: str, photo: str, job_id: str) -> str | None:
    """`running` while the job runs, None once its result is written, else the line saying why it failed."""
    status, _, answer = _request(f"{url}/v2/jobs/{job_id}", key)
    if status == 404:
        return f"{photo}: job {job_id} is gone (removed after its retention time)"
    job = _json(status, answer, f"{photo}")
    if job["status"] in ("queued", "running"):
        return "running"
    if job["status"] == "succeeded":
        status, _, result = _request(f"{url}{job['result_url']}", key)
        if status != 200:
            raise ClientError(f"{photo}: fetching the result: HTTP {status}")
        _output_path(out, photo, job.get("content_type")).write_bytes(result)
        return None
    error = job.get("error") or {}
    return f"{photo}: {job['status']} {error.get('code', '')} {error.get('message', '')}".strip()
