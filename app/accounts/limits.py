"""Rate limits on the `limits` library (the engine under slowapi), moving window.

Per API key: the key's own `--rate` or its plan's limit. Per client IP: failed
authentications (a brute-force guard). In process by default; on the service's
Redis when CUTOUT_REDIS_URL is set, so every replica counts against one window.

We call the library's asyncio API directly rather than through slowapi's
decorators: the limit is chosen after authentication, and slowapi's storage
calls are synchronous, which would block the event loop on every Redis round trip.
"""

from __future__ import annotations

import contextlib
import functools
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass

from limits import RateLimitItem
from limits import parse as parse_uncached
from limits.aio.storage import MemoryStorage, RedisStorage, Storage
from limits.aio.strategies import MovingWindowRateLimiter

from app.errors import ApiError, rate_limited
from app.settings import Settings
from app.store import Account

KEY_PREFIX = "cutout:limits"

# A limit's text ("60/minute") parsed once: every request looks one up (the plan's or the account's own).
parse = functools.lru_cache(maxsize=256)(parse_uncached)


@dataclass(frozen=True)
class RateState:
    limit: RateLimitItem
    remaining: int
    reset_at: float

    def headers(self) -> dict[str, str]:
        return {
            "X-RateLimit-Limit": str(self.limit.amount),
            "X-RateLimit-Remaining": str(self.remaining),
            "X-RateLimit-Reset": str(int(self.reset_at)),
        }

    @contextlib.contextmanager
    def on_errors(self) -> Iterator[None]:
        """Every authenticated response carries the limit headers, errors included."""
        try:
            yield
        except ApiError as err:
            for name, value in self.headers().items():
                err.headers.setdefault(name, value)
            raise


def _storage(settings: Settings) -> tuple[Storage, Callable[[], AbstractContextManager[None]]]:
    """The counters' storage, and the guard that turns its outages into StoreUnavailable."""
    if not settings.redis_url:
        return MemoryStorage(), contextlib.nullcontext
    from app.store.redis_client import (  # loads redis-py: only when used
        client_options,
        unavailable_on_redis_errors,
    )

    storage = RedisStorage(
        "async+" + settings.redis_url, implementation="redispy", key_prefix=KEY_PREFIX, **client_options()
    )
    return storage, unavailable_on_redis_errors


class RateLimits:
    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._auth_failures = parse(settings.auth_failure_limit)
        storage, self._guard = _storage(settings)
        self._limiter = MovingWindowRateLimiter(storage)

    def limit_for(self, account: Account) -> str:
        return account.rate_limit or self._settings.plan_for(account.plan).rate_limit

    async def _state(self, item: RateLimitItem, *identifiers: str) -> RateState:
        stats = await self._limiter.get_window_stats(item, *identifiers)
        return RateState(item, stats.remaining, stats.reset_time)

    async def hit(self, account: Account) -> RateState:
        """Count one request against the account's limit; raise 429 when it is spent."""
        limit_text = self.limit_for(account)
        item = parse(limit_text)
        with self._guard():
            allowed = await self._limiter.hit(item, "key", account.id)
            state = await self._state(item, "key", account.id)
        if not allowed:
            raise rate_limited(state.reset_at - time.time(), limit_text, headers=state.headers())
        return state

    async def peek(self, account: Account) -> RateState:
        """The account's window without counting a request (for GET /v2/account)."""
        with self._guard():
            return await self._state(parse(self.limit_for(account)), "key", account.id)

    async def auth_failed(self, client_ip: str) -> None:
        """Counts a wrong key from this address; 429 once it has sent too many. Only after the key
        failed: a valid key is always served, so a victim whose address a guesser shares (a NAT,
        an untrusted proxy) is not locked out. Keys carry 256 random bits, so what this bounds
        is the flood of wrong keys, not the odds of guessing one. One atomic hit: concurrent
        wrong keys cannot slip past the limit between a test and a count."""
        with self._guard():
            if await self._limiter.hit(self._auth_failures, "authfail", client_ip):
                return
            state = await self._state(self._auth_failures, "authfail", client_ip)
        raise rate_limited(
            state.reset_at - time.time(),
            str(self._auth_failures),
            why="Too many requests with a wrong API key from this address. ",
        )
