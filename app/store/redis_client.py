"""What every Redis client of the service shares: the accounts store (app/store/redis.py) and
the rate limiter (app/accounts/limits.py) connect the same way and fail closed the same way.

Imported only when CUTOUT_REDIS_URL is set: a SQLite deployment never loads redis-py.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Coroutine, Iterator
from typing import Any, ParamSpec, TypeVar

from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError, ReadOnlyError, TimeoutError

from app.store.base import StoreUnavailable

# Errors that mean "Redis cannot be reached or cannot write now", as opposed to a bug.
UNREACHABLE = (ConnectionError, TimeoutError, ReadOnlyError)


def client_options() -> dict[str, Any]:
    """Connection settings for every Redis client of the service: fail fast, reconnect by itself.

    A request must not hang on a dead Redis: connect and read time out in
    seconds, and a failed command is retried twice within ~50 ms before the
    request fails closed. Broken pooled connections are dropped and re-made on
    the next command, so the service recovers when Redis is back.
    """
    return {
        "socket_connect_timeout": 1.0,
        "socket_timeout": 2.0,
        "retry": Retry(ExponentialBackoff(cap=0.05, base=0.01), retries=2),
        "health_check_interval": 15,
    }


@contextlib.contextmanager
def unavailable_on_redis_errors() -> Iterator[None]:
    """The one place where a Redis outage becomes StoreUnavailable (callers answer 503)."""
    try:
        yield
    except UNREACHABLE as err:
        raise StoreUnavailable(f"redis: {err}") from err


P = ParamSpec("P")
T = TypeVar("T")


def fail_closed(fn: Callable[P, Coroutine[Any, Any, T]]) -> Callable[P, Coroutine[Any, Any, T]]:
    """A Redis call whose failure is StoreUnavailable (a 503 the client may retry), never a guess."""

    @functools.wraps(fn)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
        with unavailable_on_redis_errors():
            return await fn(*args, **kwargs)

    return wrapper
