"""API key authentication: the key a request presents -> an active account.

`ApiKey: <key>` is the documented header. `X-Api-Key: <key>` (as remove.bg and
PhotoRoom take it) and `Authorization: Bearer <key>` (what generic HTTP and
generated OpenAPI clients send) are accepted too, and so is `Authorization: Key <key>` (fal's
clients); the first one present wins.

Keys are looked up by their SHA-256 digest (the store never holds a key) and
never logged. Wrong keys count against the client address's failure limit.
"""

from __future__ import annotations

from starlette.requests import Request

from app.accounts.limits import RateLimits
from app.errors import invalid_api_key
from app.http import context
from app.store import Account, Store

API_KEY_HEADER = "ApiKey"
X_API_KEY_HEADER = "X-Api-Key"
MAX_KEY_LENGTH = 200
AUTHORIZATION_SCHEMES = ("bearer", "key")  # `Authorization: Bearer <key>`, or fal's `Authorization: Key <key>`


# The README quotes it (tests/test_one_home.py keeps the two the same).
MISSING_KEY = (
    f"Missing API key: send it in the {API_KEY_HEADER} header "
    f"(or {X_API_KEY_HEADER}, or Authorization: Bearer <key>, or Authorization: Key <key>)."
)


def presented_key(request: Request) -> str:
    for header in (API_KEY_HEADER, X_API_KEY_HEADER):
        if key := request.headers.get(header, "").strip():
            return key
    scheme, _, credentials = request.headers.get("Authorization", "").strip().partition(" ")
    return credentials.strip() if scheme.lower() in AUTHORIZATION_SCHEMES else ""


async def authenticate(request: Request, store: Store, limits: RateLimits) -> Account:
    key = presented_key(request)
    if not key:
        raise invalid_api_key(MISSING_KEY)
    account = await store.account_by_key(key) if len(key) <= MAX_KEY_LENGTH else None
    logged = context.of_scope(request.scope)  # what the access log says of the request
    # One message for unknown and revoked keys: the response does not tell which keys exist.
    if account is None or account.revoked:
        # Only wrong keys are limited, so a valid key is served even from an address (or a proxy
        # shared with others) that sent many wrong ones. The address: app.http.client_address.
        await limits.auth_failed(logged.client_address)
        raise invalid_api_key("The API key is unknown or revoked.")
    logged.account_id = account.id
    return account
