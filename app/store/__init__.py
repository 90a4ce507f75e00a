"""Accounts and credits behind one interface: embedded SQLite by default, Redis when configured."""

from __future__ import annotations

from app.settings import Settings
from app.store.base import (
    Account,
    InsufficientCredits,
    Reservation,
    Store,
    StoreUnavailable,
    UnknownAccount,
)


def open_store(settings: Settings) -> Store:
    from app.store.sqlite import SqliteStore

    return SqliteStore(settings.store_path)


__all__ = [
    "Account",
    "InsufficientCredits",
    "Reservation",
    "Store",
    "StoreUnavailable",
    "UnknownAccount",
    "open_store",
]
