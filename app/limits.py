"""Per-key rate limits by plan, on the `limits` library (the engine under slowapi), moving window."""

from __future__ import annotations

import time
from dataclasses import dataclass

from limits import RateLimitItem, parse
from limits.aio.storage import MemoryStorage
from limits.aio.strategies import MovingWindowRateLimiter

from app.errors import rate_limited
from app.settings import Settings
from app.store import Account


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


class RateLimits:
    def __init__(self, settings: Settings) -> None:
        self._plans = {name: plan.rate_limit for name, plan in settings.plans.items()}
        self._default = self._plans.get(settings.default_plan, "60/minute")
        self._limiter = MovingWindowRateLimiter(MemoryStorage())

    def limit_for(self, account: Account) -> str:
        return account.rate_limit or self._plans.get(account.plan, self._default)

    async def hit(self, account: Account) -> RateState:
        """Count one request against the account's limit; raise 429 when it is spent."""
        limit_text = self.limit_for(account)
        item = parse(limit_text)
        allowed = await self._limiter.hit(item, "key", account.id)
        stats = await self._limiter.get_window_stats(item, "key", account.id)
        state = RateState(item, stats.remaining, stats.reset_time)
        if not allowed:
            err = rate_limited(stats.reset_time - time.time(), limit_text)
            err.headers.update(state.headers())
            raise err
        return state
