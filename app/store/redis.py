"""Shared store on Redis: any number of replicas see one set of accounts and one ledger.

Every change to a balance is one Lua script, so check-and-decrement (and the
idempotency record that rides on it) is a single atomic step on the server.
Each script may be run twice for one call (redis-py retries a command whose
reply was lost), so each is idempotent: a reservation id reserves once, and a
settled reservation remembers whether it was charged or refunded.

Keys (all under `cutout:`):
    acct:{id}         hash: plan, credits, rate_limit, revoked, created_at, key_hash, label, unlimited
    key:{sha256}      the account id for a hashed API key (keys themselves are never stored)
    accounts          sorted set of account ids by creation time
    resv:{id}         hash: account, amount, idem, created_at, state (held|charged|refunded)
    resv:held         sorted set of held reservation ids by creation time (for the sweeper)
    idem:{digest}     hash: fingerprint, reservation, state (pending|done), answer_type and answer (base64)
                      of a delivered request, expires with its window
    ledger            stream of credit movements, trimmed to about LEDGER_MAX entries

Durability is Redis's: run it with `appendonly yes` (`appendfsync always` to
lose no acknowledged charge on a crash).
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from typing import Any

import redis.asyncio as aioredis

from app.store.base import (
    Account,
    IdempotencyClaim,
    IdempotencyInFlight,
    IdempotencyMismatch,
    InsufficientCredits,
    Reservation,
    StoredAnswer,
    UnknownAccount,
    charged_of,
    hash_api_key,
    new_account,
    new_api_key,
    now,
)
from app.store.redis_client import client_options, fail_closed
from app.store.redis_scripts import ADJUST, COMMIT, REFUND, RESERVE, ROTATE, UPDATE_FIELDS

PREFIX = "cutout:"
LEDGER_MAX = 1_000_000
# A settled reservation is kept this long so that a retried commit/refund sees the outcome.
SETTLED_TTL_S = 3600


def _text(value: object) -> str:
    """A value as redis-py answers it with decode_responses=True; its annotations also allow bytes."""
    if not isinstance(value, str):
        raise TypeError(f"expected a decoded string from Redis, got {type(value).__name__}")
    return value


def _account(answer: Mapping[Any, Any]) -> Account:
    fields = {_text(name): _text(value) for name, value in answer.items()}
    return Account(
        id=fields["id"],
        plan=fields["plan"],
        credits=int(fields["credits"]),
        rate_limit=fields.get("rate_limit") or None,
        revoked=fields.get("revoked") == "1",
        created_at=float(fields["created_at"]),
        label=fields.get("label") or None,
        unlimited=fields.get("unlimited") == "1",
    )


class RedisStore:
    def __init__(self, url: str) -> None:
        self._redis = aioredis.Redis.from_url(url, decode_responses=True, **client_options())
        self._reserve = self._redis.register_script(RESERVE)
        self._commit = self._redis.register_script(COMMIT)
        self._refund = self._redis.register_script(REFUND)
        self._adjust = self._redis.register_script(ADJUST)
        self._update = self._redis.register_script(UPDATE_FIELDS)
        self._rotate = self._redis.register_script(ROTATE)

    @staticmethod
    def _acct(account_id: str) -> str:
        return f"{PREFIX}acct:{account_id}"

    @staticmethod
    def _resv(reservation_id: str) -> str:
        return f"{PREFIX}resv:{reservation_id}"

    _HELD = PREFIX + "resv:held"
    _ACCOUNTS = PREFIX + "accounts"
    _LEDGER = PREFIX + "ledger"

    @fail_closed
    async def create_account(
        self,
        *,
        credits: int,
        plan: str,
        rate_limit: str | None = None,
        label: str | None = None,
        unlimited: bool = False,
    ) -> tuple[Account, str]:
        key = new_api_key()
        account = new_account(credits=credits, plan=plan, rate_limit=rate_limit, label=label, unlimited=unlimited)
        key_hash = hash_api_key(key)
        async with self._redis.pipeline(transaction=True) as tx:
            tx.hset(
                self._acct(account.id),
                mapping={
                    "id": account.id,
                    "plan": plan,
                    "credits": credits,
                    "rate_limit": rate_limit or "",
                    "revoked": "0",
                    "created_at": repr(account.created_at),
                    "key_hash": key_hash,
                    "label": label or "",
                    "unlimited": "1" if unlimited else "0",
                },
            )
            tx.set(f"{PREFIX}key:{key_hash}", account.id)
            tx.zadd(self._ACCOUNTS, {account.id: account.created_at})
            tx.xadd(
                self._LEDGER,
                {"account": account.id, "delta": credits, "reason": "create", "at": repr(account.created_at)},
                maxlen=LEDGER_MAX,
                approximate=True,
            )
            await tx.execute()
        return account, key

    @fail_closed
    async def account_by_key(self, api_key: str) -> Account | None:
        digest = hash_api_key(api_key)
        account_id = await self._redis.get(f"{PREFIX}key:{digest}")
        if account_id is None:
            return None
        fields = await self._redis.hgetall(self._acct(_text(account_id)))
        return _account(fields) if fields else None

    @fail_closed
    async def get_account(self, account_id: str) -> Account | None:
        fields = await self._redis.hgetall(self._acct(account_id))
        return _account(fields) if fields else None

    @fail_closed
    async def list_accounts(self) -> list[Account]:
        ids = await self._redis.zrange(self._ACCOUNTS, 0, -1)
        async with self._redis.pipeline(transaction=False) as pipe:
            for account_id in ids:
                pipe.hgetall(self._acct(_text(account_id)))
            rows = await pipe.execute()
        return [_account(fields) for fields in rows if fields]

    async def _set_fields(self, account_id: str, fields: dict[str, str]) -> None:
        args = [item for pair in fields.items() for item in pair]
        if not await self._update(keys=[self._acct(account_id)], args=args):
            raise UnknownAccount(account_id)

    @fail_closed
    async def revoke(self, account_id: str) -> None:
        await self._set_fields(account_id, {"revoked": "1"})

    @fail_closed
    async def rotate_key(self, account_id: str) -> str:
        key = new_api_key()
        key_hash = hash_api_key(key)
        rotated = await self._rotate(
            keys=[self._acct(account_id), f"{PREFIX}key:{key_hash}"], args=[key_hash, f"{PREFIX}key:", account_id]
        )
        if not rotated:
            raise UnknownAccount(account_id)
        return key

    @fail_closed
    async def set_label(self, account_id: str, label: str | None) -> None:
        await self._set_fields(account_id, {"label": label or ""})

    @fail_closed
    async def set_plan(self, account_id: str, plan: str, rate_limit: str | None) -> None:
        await self._set_fields(account_id, {"plan": plan, "rate_limit": rate_limit or ""})

    @fail_closed
    async def adjust_credits(self, account_id: str, delta: int, reason: str, clamp: bool = False) -> int:
        outcome, balance = await self._adjust(
            keys=[self._acct(account_id), self._LEDGER],
            args=[delta, reason, repr(now()), LEDGER_MAX, account_id, "1" if clamp else "0"],
        )
        if outcome == "unknown":
            raise UnknownAccount(account_id)
        if outcome == "insufficient":
            raise InsufficientCredits(int(balance), -delta)
        return int(balance)

    @fail_closed
    async def reserve(
        self,
        account_id: str,
        amount: int,
        reservation_id: str,
        idempotency: IdempotencyClaim | None = None,
        *,
        hold_s: float = 0.0,
    ) -> Reservation:
        idem_key = f"{PREFIX}idem:{idempotency.key}" if idempotency else f"{PREFIX}idem:-"
        outcome, balance, *kept = await self._reserve(
            keys=[self._acct(account_id), self._resv(reservation_id), self._HELD, idem_key],
            args=[
                amount,
                reservation_id,
                repr(now()),
                idempotency.fingerprint if idempotency else "",
                int(idempotency.window_s * 1000) if idempotency else 0,
                account_id,
                repr(now() + hold_s),
            ],
        )
        balance = int(balance)
        if outcome == "ok":
            return Reservation(reservation_id, account_id, amount, balance, idempotency)
        if outcome == "replay":
            # Kept in base64: this client decodes every answer as text.
            answer = StoredAnswer(kept[0], base64.b64decode(kept[1])) if kept and kept[0] else None
            return Reservation(reservation_id, account_id, 0, balance, idempotency, replayed=True, answer=answer)
        if outcome == "in_flight":
            raise IdempotencyInFlight()
        if outcome == "mismatch":
            raise IdempotencyMismatch()
        raise InsufficientCredits(balance, amount)

    @fail_closed
    async def commit(
        self, reservation: Reservation, answer: StoredAnswer | None = None, amount: int | None = None
    ) -> bool:
        charged_of(reservation, amount)  # a ValueError when more than reserved
        window_ms = int(reservation.idempotency.window_s * 1000) if reservation.idempotency else 0
        kept = ["", ""] if answer is None else [answer.content_type, base64.b64encode(answer.body).decode("ascii")]
        charged = await self._commit(
            keys=[self._resv(reservation.id), self._HELD, self._LEDGER, self._acct(reservation.account_id)],
            args=[
                *(reservation.id, repr(now()), SETTLED_TTL_S, window_ms, LEDGER_MAX),
                *(*kept, "" if amount is None else amount),
            ],
        )
        return bool(charged)

    async def _refund_by_id(self, reservation_id: str, account_id: str) -> int:
        balance = await self._refund(
            keys=[self._resv(reservation_id), self._HELD, self._acct(account_id)],
            args=[reservation_id, SETTLED_TTL_S],
        )
        return int(balance)

    @fail_closed
    async def refund(self, reservation: Reservation) -> int:
        return await self._refund_by_id(reservation.id, reservation.account_id)

    @fail_closed
    async def sweep_stale(self, older_than_s: float) -> int:
        # Idempotency records expire by themselves (TTL); only held reservations need a sweep.
        stale = await self._redis.zrangebyscore(self._HELD, "-inf", now() - older_than_s)
        refunded = 0
        for held in stale:
            reservation_id = _text(held)
            account_id, hold_until = await self._redis.hmget(self._resv(reservation_id), ["account", "hold_until"])
            if account_id is None:  # settled meanwhile, or its record expired
                await self._redis.zrem(self._HELD, reservation_id)
                continue
            if hold_until and float(_text(hold_until)) > now():  # an asynchronous job's: its engine settles it
                continue
            await self._refund_by_id(reservation_id, _text(account_id))
            refunded += 1
        return refunded

    @fail_closed
    async def ping(self) -> None:
        await self._redis.ping()

    async def close(self) -> None:
        await self._redis.aclose()
