"""Charging for one request: reserve before the work, commit on success, refund on any failure.

A request whose price is known only once it ran (model=auto: the first model's price, or the one it
escalated to) reserves the larger and settles for what ran: the commit charges that and gives the
rest back in the same step."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass

import anyio

from app.errors import ApiError, idempotency_key_in_use, processing_timeout
from app.store import (
    Account,
    IdempotencyClaim,
    IdempotencyInFlight,
    IdempotencyMismatch,
    InsufficientCredits,
    Reservation,
    Store,
    StoredAnswer,
    StoreUnavailable,
)

log = logging.getLogger("cutout.billing")


async def reserve(
    store: Store,
    account: Account,
    amount: int,
    request_id: str,
    idempotency: IdempotencyClaim | None,
    *,
    hold_s: float = 0.0,
) -> Reservation:
    """The credits held, or the ApiError the client gets (402, or an Idempotency-Key conflict)."""
    try:
        return await store.reserve(account.id, amount, request_id, idempotency, hold_s=hold_s)
    except InsufficientCredits as err:
        raise ApiError(
            "insufficient_credits",
            f"This request costs {err.needed} credits and the account has {err.balance}. Top up to continue.",
        ) from None
    except IdempotencyInFlight:
        raise idempotency_key_in_use() from None
    except IdempotencyMismatch:
        raise ApiError(
            "idempotency_key_reused",
            "This Idempotency-Key was used for a different request (other image, model or endpoint). "
            "Use a new key for a new request.",
        ) from None


@dataclass
class Bill:
    """A reservation and what the commit will charge of it: all of it, unless `settle_for` says less."""

    reservation: Reservation
    amount: int

    def settle_for(self, amount: int) -> None:
        if amount < 0:
            raise ValueError(f"cannot settle a reservation for {amount}")
        # Never more than was reserved: a replay or an unlimited account reserved 0 and pays nothing.
        self.amount = min(amount, self.reservation.amount)

    @property
    def remaining(self) -> int:
        """The balance after the commit: the reservation's, plus what it gives back."""
        return self.reservation.remaining + self.reservation.amount - self.amount


@asynccontextmanager
async def charge(
    store: Store,
    account: Account,
    amount: int,
    request_id: str,
    idempotency: IdempotencyClaim | None = None,
    keep: Callable[[], StoredAnswer | None] | None = None,
) -> AsyncIterator[Bill]:
    """keep: at the commit, the answer to keep with the Idempotency-Key (None: nothing kept)."""
    # An unlimited account's requests go through the same steps (idempotency included), for nothing.
    reservation = await reserve(store, account, 0 if account.unlimited else amount, request_id, idempotency)
    bill = Bill(reservation, reservation.amount)
    if reservation.replayed:  # already paid for under this Idempotency-Key
        yield bill
        return
    try:
        yield bill
    except BaseException:
        # Shielded: a client that hung up cancels the request, and the refund must still land.
        with anyio.CancelScope(shield=True):
            try:
                await store.refund(reservation)
            except StoreUnavailable:
                # The client gets the error that happened; the sweeper refunds the held credits later.
                log.warning("refund of %s deferred to the sweeper: store unavailable", reservation.id)
        raise
    with anyio.CancelScope(shield=True):
        settled = None if bill.amount == reservation.amount else bill.amount
        charged = await store.commit(reservation, keep() if keep is not None else None, settled)
    if not charged:
        # Held past reservation_ttl_s and refunded by the sweeper: the work goes undelivered, unpaid.
        raise processing_timeout()
