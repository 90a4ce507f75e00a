"""Accounts and credits behind one interface: embedded SQLite by default, Redis when configured."""

from __future__ import annotations

from app.settings import Settings
from app.store.base import (
    Account,
    IdempotencyClaim,
    IdempotencyInFlight,
    IdempotencyMismatch,
    InsufficientCredits,
    Reservation,
    Store,
    StoredAnswer,
    StoreUnavailable,
    UnknownAccount,
)


def open_store(settings: Settings) -> Store:
    """Redis when CUTOUT_REDIS_URL is set (shared by replicas), else the embedded SQLite file."""
    if settings.redis_url:
        from app.store.redis import RedisStore

        return RedisStore(settings.redis_url)
    from app.store.sqlite import SqliteStore

    return SqliteStore(settings.store_path)


__all__ = [
    "Account",
    "IdempotencyClaim",
    "IdempotencyInFlight",
    "IdempotencyMismatch",
    "InsufficientCredits",
    "Reservation",
    "Store",
    "StoreUnavailable",
    "StoredAnswer",
    "UnknownAccount",
    "open_store",
]
