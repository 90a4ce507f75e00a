"""What one request's access log line and metrics say, carried typed in the ASGI scope's state.

RequestContext (app/http/middleware.py) starts it with the request id and the client address;
whoever learns a fact fills it in:
authentication the account, the rembg routes the model, the inference time and
the charge, and every error response its code as it is sent (app/http/errors.py).
"""

from __future__ import annotations

from collections.abc import MutableMapping
from dataclasses import dataclass
from typing import Any

from starlette.requests import HTTPConnection

_STATE_KEY = "cutout"


@dataclass
class RequestInfo:
    request_id: str
    client_address: str = "unknown"  # what rate limits count against (app/http/client_address.py)
    account_id: str | None = None  # never the key
    model: str | None = None
    inference_ms: float | None = None
    credits_charged: int = 0
    error_code: str | None = None


def start(scope: MutableMapping[str, Any], request_id: str, client_address: str) -> RequestInfo:
    info = RequestInfo(request_id, client_address)
    scope.setdefault("state", {})[_STATE_KEY] = info
    return info


def of_scope(scope: Any) -> RequestInfo:
    """The request's info; a blank one (recording nothing) outside RequestContext."""
    info = scope.get("state", {}).get(_STATE_KEY)
    return info if isinstance(info, RequestInfo) else RequestInfo("")


def request_id_of(request: HTTPConnection) -> str:
    return of_scope(request.scope).request_id
