"""API key authentication: the `ApiKey` header -> an active account."""

from __future__ import annotations

from starlette.requests import Request

from app.errors import invalid_api_key
from app.store import Account, Store

API_KEY_HEADER = "ApiKey"
MAX_KEY_LENGTH = 200


async def authenticate(request: Request, store: Store) -> Account:
    key = request.headers.get(API_KEY_HEADER, "").strip()
    if not key:
        raise invalid_api_key(f"Missing API key: send it in the {API_KEY_HEADER} header.")
    if len(key) > MAX_KEY_LENGTH:
        raise invalid_api_key("The API key is unknown or revoked.")
    account = await store.account_by_key(key)
    # One message for unknown and revoked keys: the response does not tell which keys exist.
    if account is None or account.revoked:
        raise invalid_api_key("The API key is unknown or revoked.")
    return account
