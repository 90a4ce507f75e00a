"""The `Idempotency-Key` header: a client's retry of a request is charged once.

The claim names the account-scoped key (hashed: bounded size, no client text
stored) and a fingerprint of what is asked (endpoint, model, image bytes), so
the same key on a different request is refused instead of replaying.
"""

from __future__ import annotations

import hashlib

from starlette.requests import Request

from app.errors import invalid_parameter
from app.store import Account, IdempotencyClaim
from app.store.base import idempotency_digest

HEADER = "Idempotency-Key"
REPLAYED_HEADER = "Idempotent-Replayed"
MAX_KEY_LENGTH = 255


def claim_for(
    request: Request, account: Account, window_s: float, *, output: str, model: str, image: bytes
) -> IdempotencyClaim | None:
    key = request.headers.get(HEADER)
    if key is None:
        return None
    key = key.strip()
    if not key or len(key) > MAX_KEY_LENGTH or not key.isascii() or not key.isprintable():
        raise invalid_parameter(
            f"{HEADER} must be 1 to {MAX_KEY_LENGTH} printable ASCII characters (a UUID is ideal)."
        )
    fingerprint = hashlib.sha256(f"{output}\n{model}\n".encode())
    fingerprint.update(image)
    return IdempotencyClaim(idempotency_digest(account.id, key), fingerprint.hexdigest(), window_s)
