"""The store interface: accounts, hashed API keys and the credit ledger.

Credits move in three steps so that nothing is charged for work not done:
reserve (atomic check-and-decrement before inference), then commit on success
or refund on any failure. A reservation that is neither committed nor refunded
(the process died) is refunded by `sweep_stale`.

An `Idempotency-Key` rides on the reservation: the record is created in the
same atomic step as the reservation, marked done by the commit and dropped by
the refund, so a retry is charged at most once whatever fails in between.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from dataclasses import dataclass
from typing import Protocol

KEY_PREFIX = "co_"


class InsufficientCredits(Exception):
    def __init__(self, balance: int, needed: int) -> None:
        super().__init__(f"balance {balance} < {needed}")
        self.balance = balance
        self.needed = needed


class StoreUnavailable(Exception):
    """The backing store cannot be reached; callers fail closed (503)."""


class UnknownAccount(Exception):
    pass


class IdempotencyInFlight(Exception):
    """A request with the same Idempotency-Key is still being processed."""


class IdempotencyMismatch(Exception):
    """The Idempotency-Key was already used for a different request."""


@dataclass(frozen=True)
class Account:
    id: str
    plan: str
    credits: int
    rate_limit: str | None  # overrides the plan's limit when set
    revoked: bool
    created_at: float
    label: str | None = None  # the operator's name for the account (a customer, an app), never shown to callers
    unlimited: bool = False  # requests are not charged: `credits` is neither checked nor spent


@dataclass(frozen=True)
class IdempotencyClaim:
    key: str  # digest of (account, client's Idempotency-Key): bounded size, no client text stored
    fingerprint: str  # digest of what the request asks for: same key + other request -> mismatch
    window_s: float  # how long a completed request is remembered


@dataclass(frozen=True)
class StoredAnswer:
    """A delivered answer kept with its Idempotency-Key for the window: a retry is served these bytes."""

    content_type: str
    body: bytes


@dataclass(frozen=True)
class Reservation:
    id: str
    account_id: str
    amount: int
    remaining: int  # balance right after the reservation
    idempotency: IdempotencyClaim | None = None
    # A retry of a request already charged: nothing was reserved, nothing is committed.
    replayed: bool = False
    # With `replayed`: the answer committed under the key (None when none was kept: see commit).
    answer: StoredAnswer | None = None


def new_api_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def new_account_id() -> str:
    return "acct_" + secrets.token_hex(8)


def hash_api_key(key: str) -> str:
    # Keys carry 256 bits of randomness, so a plain digest cannot be brute-forced;
    # only this digest is ever stored.
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def now() -> float:
    return time.time()


def new_account(*, credits: int, plan: str, rate_limit: str | None, label: str | None, unlimited: bool) -> Account:
    """A new account as `Store.create_account` makes it: a fresh id, not revoked, created now."""
    return Account(
        id=new_account_id(),
        plan=plan,
        credits=credits,
        rate_limit=rate_limit,
        revoked=False,
        created_at=now(),
        label=label,
        unlimited=unlimited,
    )


def charged_of(reservation: Reservation, amount: int | None) -> int:
    """What a commit charges: all the reservation (`amount` None) or `amount`, which may not exceed it."""
    charged = reservation.amount if amount is None else amount
    if not 0 <= charged <= reservation.amount:
        raise ValueError(f"cannot charge {charged} of a reservation of {reservation.amount}")
    return charged


class Store(Protocol):
    async def create_account(
        self,
        *,
        credits: int,
        plan: str,
        rate_limit: str | None = None,
        label: str | None = None,
        unlimited: bool = False,
    ) -> tuple[Account, str]:
        """Create an account and return it with its API key (shown once, stored hashed)."""
        ...

    async def rotate_key(self, account_id: str) -> str:
        """A new API key for the account (returned once, stored hashed); the old key stops working at once."""
        ...

    async def set_label(self, account_id: str, label: str | None) -> None: ...

    async def account_by_key(self, api_key: str) -> Account | None: ...

    async def get_account(self, account_id: str) -> Account | None: ...

    async def list_accounts(self) -> list[Account]: ...

    async def revoke(self, account_id: str) -> None: ...

    async def adjust_credits(self, account_id: str, delta: int, reason: str, clamp: bool = False) -> int:
        """Grant (delta > 0) or deduct (delta < 0). Returns the balance. A deduct below zero raises
        InsufficientCredits and changes nothing; with `clamp` it deducts down to zero instead."""
        ...

    async def set_plan(self, account_id: str, plan: str, rate_limit: str | None) -> None: ...

    async def reserve(
        self,
        account_id: str,
        amount: int,
        reservation_id: str,
        idempotency: IdempotencyClaim | None = None,
        *,
        hold_s: float = 0.0,
    ) -> Reservation:
        """Atomically take `amount` credits or raise InsufficientCredits.

        `hold_s`: the sweeper leaves the reservation held at least this long (an asynchronous job
        holds its credits until it runs; its queue engine refunds it if it never does).

        With a claim: a completed request under the same key (and fingerprint)
        returns a `replayed` reservation of 0 credits, with the answer its commit kept; one still in flight raises
        IdempotencyInFlight; a different request under the key raises
        IdempotencyMismatch. Repeating a call with the same reservation_id
        reserves once (safe to retry after a lost reply).
        """
        ...

    async def commit(
        self, reservation: Reservation, answer: StoredAnswer | None = None, amount: int | None = None
    ) -> bool:
        """Make the charge final (idempotent). False when the reservation is gone
        (refunded or swept as stale): then nothing was charged. With an Idempotency-Key, `answer`
        is kept with the key for its window: a replayed reservation carries it. `amount` (at most
        the reserved): charge only that and give the rest back in the same step; None: all of it."""
        ...

    async def refund(self, reservation: Reservation) -> int:
        """Give the credits back (idempotent; a committed reservation stays charged). Returns the balance."""
        ...

    async def sweep_stale(self, older_than_s: float) -> int:
        """Refund reservations older than the given age and drop expired
        idempotency records; returns how many reservations were refunded."""
        ...

    async def ping(self) -> None: ...

    async def close(self) -> None: ...
