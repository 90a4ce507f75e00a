"""Charging for one request: reserve before the work, commit on success, refund on any failure."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio

from app.errors import ApiError
from app.store import Account, InsufficientCredits, Reservation, Store


@asynccontextmanager
async def charge(store: Store, account: Account, amount: int, request_id: str) -> AsyncIterator[Reservation]:
    try:
        reservation = await store.reserve(account.id, amount, request_id)
    except InsufficientCredits as err:
        raise ApiError(
            402,
            "insufficient_credits",
            f"This request costs {err.needed} credits and the account has {err.balance}. Top up to continue.",
        ) from None
    try:
        yield reservation
    except BaseException:
        # Shielded: a client that hung up cancels the request, and the refund must still land.
        with anyio.CancelScope(shield=True):
            await store.refund(reservation)
        raise
    with anyio.CancelScope(shield=True):
        await store.commit(reservation)
