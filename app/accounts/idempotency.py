"""The `Idempotency-Key` header: a client's retry of a request is charged once.

The claim names the account-scoped key (hashed: bounded size, no client text
stored) and a fingerprint of what is asked (endpoint, model, image bytes), so
the same key on a different request is refused instead of replaying.
"""

from __future__ import annotations

import functools
import hashlib

import anyio
from starlette.requests import Request

from app.errors import invalid_parameter
from app.store import Account, IdempotencyClaim

HEADER = "Idempotency-Key"
REPLAYED_HEADER = "Idempotent-Replayed"
MAX_KEY_LENGTH = 255
# A delivered answer up to this size is kept with its key for the window, and a retry is served those
# bytes; a larger one is not kept (the store's memory or disk), and its retries are charged like new
# work: never recomputed for free.
MAX_STORED_ANSWER_BYTES = 16 * 1024 * 1024


def idempotency_digest(account_id: str, client_key: str) -> str:
    return hashlib.sha256(f"{account_id}\n{client_key}".encode()).hexdigest()


def client_key(request: Request) -> str | None:
    """The request's Idempotency-Key, or None without one; 400 when it is not a usable key."""
    key = request.headers.get(HEADER)
    if key is None:
        return None
    key = key.strip()
    if not key or len(key) > MAX_KEY_LENGTH or not key.isascii() or not key.isprintable():
        raise invalid_parameter(f"{HEADER} must be 1 to {MAX_KEY_LENGTH} printable ASCII characters (a UUID is ideal).")
    return key


def claim(
    account_id: str, key: str, window_s: float, *, output: str, model: str, image: bytes, options: str = ""
) -> IdempotencyClaim:
    # Output options join the fingerprint only when given, so plain requests keep their fingerprints.
    head = f"{output}\n{model}\n" + (f"{options}\n" if options else "")
    fingerprint = hashlib.sha256(head.encode())
    fingerprint.update(image)
    return IdempotencyClaim(idempotency_digest(account_id, key), fingerprint.hexdigest(), window_s)


async def claim_for(
    request: Request, account: Account, window_s: float, *, output: str, model: str, image: bytes, options: str = ""
) -> IdempotencyClaim | None:
    key = client_key(request)
    if key is None:
        return None
    # Hashing an upload of up to max_body_bytes takes milliseconds: not on the event loop.
    make = functools.partial(claim, account.id, key, window_s, output=output, model=model, image=image, options=options)
    return await anyio.to_thread.run_sync(make)
