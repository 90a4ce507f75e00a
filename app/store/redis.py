"""Shared store on Redis: any number of replicas see one set of accounts and one ledger.

Every change to a balance is one Lua script, so check-and-decrement (and the
idempotency record that rides on it) is a single atomic step on the server.
Each script may be run twice for one call (redis-py retries a command whose
reply was lost), so each is idempotent: a reservation id reserves once, and a
settled reservation remembers whether it was charged or refunded.

Keys (all under `cutout:`):
    acct:{id}         hash: plan, credits, rate_limit, revoked, created_at, key_hash
    key:{sha256}      the account id for a hashed API key (keys themselves are never stored)
    accounts          sorted set of account ids by creation time
    resv:{id}         hash: account, amount, idem, created_at, state (held|charged|refunded)
    resv:held         sorted set of held reservation ids by creation time (for the sweeper)
    idem:{digest}     hash: fingerprint, reservation, state (pending|done), expires with its window
    ledger            stream of credit movements, trimmed to about LEDGER_MAX entries

Durability is Redis's: run it with `appendonly yes` (`appendfsync always` to
lose no acknowledged charge on a crash).
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from typing import ParamSpec, TypeVar

import redis.asyncio as aioredis

from app.store.base import (
    Account,
    IdempotencyClaim,
    IdempotencyInFlight,
    IdempotencyMismatch,
    InsufficientCredits,
    Reservation,
    UnknownAccount,
    hash_api_key,
    new_account_id,
    new_api_key,
    now,
)
from app.store.redis_client import client_options, unavailable_on_redis_errors

P = ParamSpec("P")
T = TypeVar("T")

PREFIX = "cutout:"
LEDGER_MAX = 1_000_000
# A settled reservation is kept this long so that a retried commit/refund sees the outcome.
SETTLED_TTL_S = 3600


def _fail_closed(fn: Callable[P, Awaitable[T]]) -> Callable[P, Awaitable[T]]:
    @functools.wraps(fn)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
        with unavailable_on_redis_errors():
            return await fn(*args, **kwargs)

    return wrapper


# KEYS: acct, resv, resv:held, idem (or a placeholder)
# ARGV: amount, reservation id, now, fingerprint ('' = none), window ms, account id, hold until
RESERVE = """
local credits = tonumber(redis.call('HGET', KEYS[1], 'credits'))
if not credits then return {'unknown', 0} end
if redis.call('EXISTS', KEYS[2]) == 1 then return {'ok', credits} end
local fingerprint = ARGV[4]
if fingerprint ~= '' then
    local seen = redis.call('HMGET', KEYS[4], 'fingerprint', 'state')
    if seen[1] then
        if seen[1] ~= fingerprint then return {'mismatch', credits} end
        if seen[2] == 'done' then return {'replay', credits} end
        return {'in_flight', credits}
    end
end
local amount = tonumber(ARGV[1])
if credits < amount then return {'insufficient', credits} end
local left = redis.call('HINCRBY', KEYS[1], 'credits', -amount)
local idem = ''
if fingerprint ~= '' then
    idem = KEYS[4]
    redis.call('HSET', idem, 'fingerprint', fingerprint, 'reservation', ARGV[2], 'state', 'pending')
    redis.call('PEXPIRE', idem, ARGV[5])
end
redis.call('HSET', KEYS[2], 'account', ARGV[6], 'amount', amount, 'idem', idem, 'created_at', ARGV[3], 'state', 'held',
    'hold_until', ARGV[7])
redis.call('ZADD', KEYS[3], ARGV[3], ARGV[2])
return {'ok', left}
"""

# KEYS: resv, resv:held, ledger   ARGV: reservation id, now, settled ttl s, window ms, ledger max
COMMIT = """
local r = redis.call('HMGET', KEYS[1], 'account', 'amount', 'idem', 'state')
if r[4] == 'charged' then return 1 end
if r[4] ~= 'held' then return 0 end
redis.call('HSET', KEYS[1], 'state', 'charged')
redis.call('EXPIRE', KEYS[1], ARGV[3])
redis.call('ZREM', KEYS[2], ARGV[1])
if r[3] ~= '' then
    redis.call('HSET', r[3], 'state', 'done')
    redis.call('PEXPIRE', r[3], ARGV[4])
end
redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[5], '*',
    'account', r[1], 'delta', -tonumber(r[2]), 'reason', 'charge', 'ref', ARGV[1], 'at', ARGV[2])
return 1
"""

# KEYS: resv, resv:held, acct   ARGV: reservation id, settled ttl s
REFUND = """
local r = redis.call('HMGET', KEYS[1], 'amount', 'idem', 'state')
if r[3] == 'held' then
    redis.call('HINCRBY', KEYS[3], 'credits', r[1])
    redis.call('HSET', KEYS[1], 'state', 'refunded')
    redis.call('EXPIRE', KEYS[1], ARGV[2])
    -- The key is free again: nothing was charged under it, so a retry must run.
    if r[2] ~= '' and redis.call('HGET', r[2], 'reservation') == ARGV[1] then
        redis.call('DEL', r[2])
    end
end
redis.call('ZREM', KEYS[2], ARGV[1])
return tonumber(redis.call('HGET', KEYS[3], 'credits') or 0)
"""

# KEYS: acct, ledger   ARGV: delta, reason, now, ledger max
ADJUST = """
local credits = tonumber(redis.call('HGET', KEYS[1], 'credits'))
if not credits then return -1 end
local left = math.max(credits + tonumber(ARGV[1]), 0)
redis.call('HSET', KEYS[1], 'credits', left)
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[4], '*',
    'account', ARGV[5], 'delta', ARGV[1], 'reason', ARGV[2], 'at', ARGV[3])
return left
"""

# KEYS: acct   ARGV: field, value, field, value, ...
UPDATE_FIELDS = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], unpack(ARGV))
return 1
"""


def _account(fields: dict[str, str]) -> Account:
    return Account(
        id=fields["id"],
        plan=fields["plan"],
        credits=int(fields["credits"]),
        rate_limit=fields.get("rate_limit") or None,
        revoked=fields.get("revoked") == "1",
        created_at=float(fields["created_at"]),
    )


class RedisStore:
    def __init__(self, url: str) -> None:
        self._redis = aioredis.Redis.from_url(url, decode_responses=True, **client_options())
        self._reserve = self._redis.register_script(RESERVE)
        self._commit = self._redis.register_script(COMMIT)
        self._refund = self._redis.register_script(REFUND)
        self._adjust = self._redis.register_script(ADJUST)
        self._update = self._redis.register_script(UPDATE_FIELDS)

    @staticmethod
    def _acct(account_id: str) -> str:
        return f"{PREFIX}acct:{account_id}"

    @staticmethod
    def _resv(reservation_id: str) -> str:
        return f"{PREFIX}resv:{reservation_id}"

    _HELD = PREFIX + "resv:held"
    _ACCOUNTS = PREFIX + "accounts"
    _LEDGER = PREFIX + "ledger"

    @_fail_closed
    async def create_account(self, *, credits: int, plan: str, rate_limit: str | None = None) -> tuple[Account, str]:
        key = new_api_key()
        account = Account(
            id=new_account_id(), plan=plan, credits=credits, rate_limit=rate_limit, revoked=False, created_at=now()
        )
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

    @_fail_closed
    async def account_by_key(self, api_key: str) -> Account | None:
        digest = hash_api_key(api_key)
        account_id = await self._redis.get(f"{PREFIX}key:{digest}")
        if account_id is None:
            return None
        fields = await self._redis.hgetall(self._acct(account_id))
        return _account(fields) if fields else None

    @_fail_closed
    async def get_account(self, account_id: str) -> Account | None:
        fields = await self._redis.hgetall(self._acct(account_id))
        return _account(fields) if fields else None

    @_fail_closed
    async def list_accounts(self) -> list[Account]:
        ids = await self._redis.zrange(self._ACCOUNTS, 0, -1)
        async with self._redis.pipeline(transaction=False) as pipe:
            for account_id in ids:
                pipe.hgetall(self._acct(account_id))
            rows = await pipe.execute()
        return [_account(fields) for fields in rows if fields]

    async def _set_fields(self, account_id: str, fields: dict[str, str]) -> None:
        args = [item for pair in fields.items() for item in pair]
        if not await self._update(keys=[self._acct(account_id)], args=args):
            raise UnknownAccount(account_id)

    @_fail_closed
    async def revoke(self, account_id: str) -> None:
        await self._set_fields(account_id, {"revoked": "1"})

    @_fail_closed
    async def set_plan(self, account_id: str, plan: str, rate_limit: str | None) -> None:
        await self._set_fields(account_id, {"plan": plan, "rate_limit": rate_limit or ""})

    @_fail_closed
    async def adjust_credits(self, account_id: str, delta: int, reason: str) -> int:
        left = await self._adjust(
            keys=[self._acct(account_id), self._LEDGER],
            args=[delta, reason, repr(now()), LEDGER_MAX, account_id],
        )
        if left < 0:
            raise UnknownAccount(account_id)
        return int(left)

    @_fail_closed
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
        outcome, balance = await self._reserve(
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
            return Reservation(reservation_id, account_id, 0, balance, idempotency, replayed=True)
        if outcome == "in_flight":
            raise IdempotencyInFlight()
        if outcome == "mismatch":
            raise IdempotencyMismatch()
        raise InsufficientCredits(balance, amount)

    @_fail_closed
    async def commit(self, reservation: Reservation) -> bool:
        window_ms = int(reservation.idempotency.window_s * 1000) if reservation.idempotency else 0
        charged = await self._commit(
            keys=[self._resv(reservation.id), self._HELD, self._LEDGER],
            args=[reservation.id, repr(now()), SETTLED_TTL_S, window_ms, LEDGER_MAX],
        )
        return bool(charged)

    async def _refund_by_id(self, reservation_id: str, account_id: str) -> int:
        balance = await self._refund(
            keys=[self._resv(reservation_id), self._HELD, self._acct(account_id)],
            args=[reservation_id, SETTLED_TTL_S],
        )
        return int(balance)

    @_fail_closed
    async def refund(self, reservation: Reservation) -> int:
        return await self._refund_by_id(reservation.id, reservation.account_id)

    @_fail_closed
    async def sweep_stale(self, older_than_s: float) -> int:
        # Idempotency records expire by themselves (TTL); only held reservations need a sweep.
        stale = await self._redis.zrangebyscore(self._HELD, "-inf", now() - older_than_s)
        refunded = 0
        for reservation_id in stale:
            account_id, hold_until = await self._redis.hmget(self._resv(reservation_id), ["account", "hold_until"])
            if account_id is None:  # settled meanwhile, or its record expired
                await self._redis.zrem(self._HELD, reservation_id)
                continue
            if hold_until and float(hold_until) > now():  # an asynchronous job's: its engine settles it
                continue
            await self._refund_by_id(reservation_id, account_id)
            refunded += 1
        return refunded

    @_fail_closed
    async def ping(self) -> None:
        await self._redis.ping()

    async def close(self) -> None:
        await self._redis.aclose()
