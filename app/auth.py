"""API key authentication: the `ApiKey` header -> an active account.

Keys are looked up by their SHA-256 digest (the store never holds a key) and
never logged. Wrong keys count against the client address's failure limit.
"""

from __future__ import annotations

from starlette.requests import Request

from app.errors import invalid_api_key
from app.limits import RateLimits
from app.store import Account, Store

API_KEY_HEADER = "ApiKey"
MAX_KEY_LENGTH = 200


async def authenticate(request: Request, store: Store, limits: RateLimits) -> Account:
    key = request.headers.get(API_KEY_HEADER, "").strip()
    if not key:
        raise invalid_api_key(f"Missing API key: send it in the {API_KEY_HEADER} header.")
    client_ip = request.client.host if request.client else "unknown"
    await limits.check_auth_failures(client_ip)
    account = await store.account_by_key(key) if len(key) <= MAX_KEY_LENGTH else None
    # One message for unknown and revoked keys: the response does not tell which keys exist.
    if account is None or account.revoked:
        await limits.record_auth_failure(client_ip)
        raise invalid_api_key("The API key is unknown or revoked.")
    request.state.account_id = account.id  # for the access log
    return account
