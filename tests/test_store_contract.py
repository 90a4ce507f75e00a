"""One contract for every store backend: the embedded SQLite file and Redis (a real redis-server).

Whatever CUTOUT_REDIS_URL selects, accounts, keys, the credit ledger and
idempotency records behave the same; these tests run unchanged on both.
"""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import anyio
import pytest
import redis

from app.accounts.idempotency import idempotency_digest
from app.store import (
    IdempotencyClaim,
    IdempotencyInFlight,
    IdempotencyMismatch,
    InsufficientCredits,
    Store,
    StoredAnswer,
    UnknownAccount,
)
from app.store.base import hash_api_key
from app.store.redis import RedisStore
from app.store.sqlite import SqliteStore
from harness import RedisServer

pytestmark = pytest.mark.anyio

Backend = tuple[Store, Callable[[], str]]  # the store, and everything it holds as text


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def _sqlite_text(path: Path) -> Callable[[], str]:
    def dump() -> str:
        with sqlite3.connect(path) as db:
            return "\n".join(db.iterdump())

    return dump


CONTRACT_DB = 1  # its own database, emptied before each test; the service tests use db 0


def _redis_text(url: str) -> Callable[[], str]:
    def dump() -> str:
        client = redis.Redis.from_url(url, decode_responses=True)
        read = {
            "hash": client.hgetall,
            "string": client.get,
            "zset": lambda k: client.zrange(k, 0, -1),
            "stream": client.xrange,
        }
        return "\n".join(f"{key} {read[client.type(key)](key)}" for key in client.scan_iter("cutout:*"))

    return dump


@pytest.fixture(params=["sqlite", "redis"])
async def backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Backend]:
    if request.param == "sqlite":
        path = tmp_path / "store.sqlite3"
        store: Store = SqliteStore(path)
        dump = _sqlite_text(path)
    else:
        server: RedisServer = request.getfixturevalue("redis_server")
        url = server.url.rsplit("/", 1)[0] + f"/{CONTRACT_DB}"
        redis.Redis.from_url(url).flushdb()
        store = RedisStore(url)
        dump = _redis_text(url)
    yield store, dump
    await store.close()


def claim(account_id: str, key: str = "retry-1", fingerprint: str = "fp-a", window_s: float = 60) -> IdempotencyClaim:
    return IdempotencyClaim(idempotency_digest(account_id, key), fingerprint, window_s)


async def balance(store: Store, account_id: str) -> int:
    account = await store.get_account(account_id)
    assert account is not None
    return account.credits


async def test_accounts_are_found_by_key_and_keys_are_stored_only_hashed(backend: Backend) -> None:
    store, dump = backend
    account, key = await store.create_account(credits=7, plan="pro", rate_limit="5/minute")
    found = await store.account_by_key(key)
    assert found is not None and found.id == account.id
    assert (found.credits, found.plan, found.rate_limit, found.revoked) == (7, "pro", "5/minute", False)
    assert await store.account_by_key(key + "x") is None
    assert await store.account_by_key("co_" + "A" * 43) is None
    assert account.id in [a.id for a in await store.list_accounts()]
    text = dump()
    assert hash_api_key(key) in text and key not in text and key[3:] not in text


async def test_revoke_and_set_plan(backend: Backend) -> None:
    store, _ = backend
    account, key = await store.create_account(credits=1, plan="free")
    await store.set_plan(account.id, "enterprise", "1000/minute")
    await store.revoke(account.id)
    found = await store.account_by_key(key)
    assert found is not None and found.revoked and found.plan == "enterprise" and found.rate_limit == "1000/minute"
    await store.set_plan(account.id, "pro", None)
    assert (await store.get_account(account.id)).rate_limit is None  # type: ignore[union-attr]
    for op in (store.revoke("acct_missing"), store.set_plan("acct_missing", "pro", None)):
        with pytest.raises(UnknownAccount):
            await op


async def test_grant_and_deduct_never_go_below_zero(backend: Backend) -> None:
    store, dump = backend
    account, _ = await store.create_account(credits=5, plan="free")
    assert await store.adjust_credits(account.id, 10, "grant") == 15
    assert await store.adjust_credits(account.id, -4, "deduct") == 11
    before = dump()
    with pytest.raises(InsufficientCredits) as refused:
        await store.adjust_credits(account.id, -100, "deduct")
    assert (refused.value.balance, refused.value.needed) == (11, 100)
    assert dump() == before, "a refused deduct changes nothing, not even the ledger"
    assert await store.adjust_credits(account.id, -100, "deduct", clamp=True) == 0
    assert await balance(store, account.id) == 0
    assert "-11" in dump(), "the ledger records what was taken, not what was asked"
    with pytest.raises(UnknownAccount):
        await store.adjust_credits("acct_missing", 1, "grant")


async def test_labels_and_unlimited_accounts(backend: Backend) -> None:
    store, _ = backend
    # An unlimited account's requests reserve nothing (app/accounts/billing.py), whatever its balance.
    free, _ = await store.create_account(credits=0, plan="free", unlimited=True)
    reservation = await store.reserve(free.id, 0, "r-free", claim(free.id))
    assert (reservation.amount, reservation.remaining) == (0, 0)
    assert await store.commit(reservation)
    assert await balance(store, free.id) == 0
    account, key = await store.create_account(credits=0, plan="free", label="Acme shop", unlimited=True)
    assert (account.label, account.unlimited) == ("Acme shop", True)
    found = await store.account_by_key(key)
    assert found is not None and (found.label, found.unlimited, found.credits) == ("Acme shop", True, 0)
    plain, _ = await store.create_account(credits=3, plan="free")
    assert (plain.label, plain.unlimited) == (None, False)
    assert ((await store.get_account(plain.id)).label, (await store.get_account(plain.id)).unlimited) == (None, False)  # type: ignore[union-attr]
    await store.set_label(plain.id, "Beta app")
    await store.set_label(account.id, None)
    labels = {a.id: a.label for a in await store.list_accounts()}
    assert labels == {free.id: None, account.id: None, plain.id: "Beta app"}
    with pytest.raises(UnknownAccount):
        await store.set_label("acct_missing", "x")


async def test_rotate_gives_the_account_a_new_key_and_the_old_one_stops_working(backend: Backend) -> None:
    store, dump = backend
    account, old = await store.create_account(credits=4, plan="pro", label="Acme")
    new = await store.rotate_key(account.id)
    assert new != old and new.startswith("co_")
    assert await store.account_by_key(old) is None
    found = await store.account_by_key(new)
    assert found is not None and (found.id, found.credits, found.plan, found.label) == (account.id, 4, "pro", "Acme")
    text = dump()
    assert hash_api_key(old) not in text and hash_api_key(new) in text and new not in text
    with pytest.raises(UnknownAccount):
        await store.rotate_key("acct_missing")


async def test_a_database_made_before_labels_opens_and_gains_them(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite3"
    with sqlite3.connect(path) as db:  # the accounts table as the first release made it
        db.execute(
            "CREATE TABLE accounts (id TEXT PRIMARY KEY, key_hash TEXT NOT NULL UNIQUE, plan TEXT NOT NULL,"
            " credits INTEGER NOT NULL CHECK (credits >= 0), rate_limit TEXT, revoked INTEGER NOT NULL DEFAULT 0,"
            " created_at REAL NOT NULL)"
        )
        db.execute("INSERT INTO accounts VALUES ('acct_old', ?, 'free', 9, NULL, 0, 1.0)", (hash_api_key("co_old"),))
    store = SqliteStore(path)
    try:
        found = await store.account_by_key("co_old")
        assert found is not None and (found.credits, found.label, found.unlimited) == (9, None, False)
        await store.set_label("acct_old", "kept")
        assert (await store.get_account("acct_old")).label == "kept"  # type: ignore[union-attr]
    finally:
        await store.close()


async def test_commit_charges_once_and_a_committed_reservation_is_not_refunded(backend: Backend) -> None:
    store, _ = backend
    account, _ = await store.create_account(credits=10, plan="free")
    reservation = await store.reserve(account.id, 3, "req_commit")
    assert reservation.remaining == 7 and await balance(store, account.id) == 7
    assert await store.commit(reservation) is True
    assert await store.commit(reservation) is True  # a retried commit is still the one charge
    assert await store.refund(reservation) == 7
    assert await balance(store, account.id) == 7


async def test_commit_for_less_charges_that_and_gives_the_rest_back_once(backend: Backend) -> None:
    """model=auto reserves the larger price and settles for what ran."""
    store, _ = backend
    account, _ = await store.create_account(credits=10, plan="free")
    reservation = await store.reserve(account.id, 2, "req_partial")
    assert await balance(store, account.id) == 8
    assert await store.commit(reservation, amount=1) is True
    assert await balance(store, account.id) == 9
    assert await store.commit(reservation, amount=1) is True  # a retried commit gives nothing back twice
    assert await store.refund(reservation) == 9
    assert await balance(store, account.id) == 9
    with pytest.raises(ValueError):
        await store.commit(await store.reserve(account.id, 1, "req_over"), amount=2)


async def test_refund_gives_back_once_and_a_refunded_reservation_cannot_be_committed(backend: Backend) -> None:
    store, _ = backend
    account, _ = await store.create_account(credits=10, plan="free")
    reservation = await store.reserve(account.id, 4, "req_refund")
    assert await store.refund(reservation) == 10
    assert await store.refund(reservation) == 10
    assert await store.commit(reservation) is False
    assert await balance(store, account.id) == 10


async def test_reserving_the_same_id_twice_reserves_once(backend: Backend) -> None:
    store, _ = backend
    account, _ = await store.create_account(credits=10, plan="free")
    await store.reserve(account.id, 2, "req_twice")
    await store.reserve(account.id, 2, "req_twice")
    assert await balance(store, account.id) == 8


async def test_insufficient_credits_change_nothing(backend: Backend) -> None:
    store, _ = backend
    account, _ = await store.create_account(credits=1, plan="free")
    with pytest.raises(InsufficientCredits) as err:
        await store.reserve(account.id, 2, "req_poor")
    assert (err.value.balance, err.value.needed) == (1, 2)
    assert await balance(store, account.id) == 1


async def test_concurrent_reservations_never_overdraw(backend: Backend) -> None:
    store, _ = backend
    account, _ = await store.create_account(credits=25, plan="free")
    taken: list[int] = []
    refused: list[int] = []

    async def attempt(i: int) -> None:
        try:
            await store.reserve(account.id, 1, f"req_race_{i}")
            taken.append(i)
        except InsufficientCredits:
            refused.append(i)

    async with anyio.create_task_group() as tg:
        for i in range(60):
            tg.start_soon(attempt, i)
    assert (len(taken), len(refused)) == (25, 35)
    assert await balance(store, account.id) == 0


async def test_sweep_refunds_stale_reservations_only(backend: Backend) -> None:
    store, _ = backend
    account, _ = await store.create_account(credits=10, plan="free")
    stale = await store.reserve(account.id, 3, "req_stale")
    await anyio.sleep(0.3)
    fresh = await store.reserve(account.id, 2, "req_fresh")
    assert await store.sweep_stale(0.2) == 1
    assert await balance(store, account.id) == 8
    assert await store.commit(stale) is False, "a swept reservation must not be charged"
    assert await store.commit(fresh) is True
    assert await balance(store, account.id) == 8


async def test_idempotent_retry_is_charged_once(backend: Backend) -> None:
    store, _ = backend
    account, _ = await store.create_account(credits=10, plan="free")
    first = await store.reserve(account.id, 2, "req_i1", claim(account.id))
    with pytest.raises(IdempotencyInFlight):
        await store.reserve(account.id, 2, "req_i2", claim(account.id))
    with pytest.raises(IdempotencyMismatch):
        await store.reserve(account.id, 2, "req_i3", claim(account.id, fingerprint="fp-b"))
    assert await store.commit(first) is True
    retry = await store.reserve(account.id, 2, "req_i4", claim(account.id))
    assert retry.replayed and retry.amount == 0 and retry.remaining == 8
    assert await balance(store, account.id) == 8
    other = await store.reserve(account.id, 2, "req_i5", claim(account.id, key="retry-2"))
    assert not other.replayed and other.remaining == 6


async def test_a_refunded_request_frees_its_idempotency_key(backend: Backend) -> None:
    store, _ = backend
    account, _ = await store.create_account(credits=10, plan="free")
    failed = await store.reserve(account.id, 2, "req_f1", claim(account.id))
    await store.refund(failed)
    again = await store.reserve(account.id, 2, "req_f2", claim(account.id))
    assert not again.replayed and again.remaining == 8
    assert await store.commit(again) is True


async def test_idempotency_window_expires(backend: Backend) -> None:
    store, _ = backend
    account, _ = await store.create_account(credits=10, plan="free")
    first = await store.reserve(account.id, 1, "req_w1", claim(account.id, window_s=0.3))
    await store.commit(first)
    assert (await store.reserve(account.id, 1, "req_w2", claim(account.id, window_s=0.3))).replayed
    await anyio.sleep(0.5)
    await store.sweep_stale(600)
    later = await store.reserve(account.id, 1, "req_w3", claim(account.id, window_s=0.3))
    assert not later.replayed and later.remaining == 8


async def test_concurrent_sends_of_one_idempotency_key_reserve_once(backend: Backend) -> None:
    store, _ = backend
    account, _ = await store.create_account(credits=10, plan="free")
    outcomes: list[str] = []

    async def send(i: int) -> None:
        try:
            await store.reserve(account.id, 1, f"req_c{i}", claim(account.id))
            outcomes.append("reserved")
        except IdempotencyInFlight:
            outcomes.append("in_flight")

    async with anyio.create_task_group() as tg:
        for i in range(10):
            tg.start_soon(send, i)
    assert sorted(outcomes) == ["in_flight"] * 9 + ["reserved"]
    assert await balance(store, account.id) == 9


async def test_idempotency_keys_are_scoped_to_the_account(backend: Backend) -> None:
    store, _ = backend
    alice, _ = await store.create_account(credits=5, plan="free")
    bob, _ = await store.create_account(credits=5, plan="free")
    await store.commit(await store.reserve(alice.id, 1, "req_a", claim(alice.id, key="same")))
    mine = await store.reserve(bob.id, 1, "req_b", claim(bob.id, key="same"))
    assert not mine.replayed and mine.remaining == 4


async def test_a_replay_carries_the_answer_its_commit_kept(backend: Backend) -> None:
    store, _ = backend
    account, _ = await store.create_account(credits=10, plan="free")
    body = bytes(range(256)) * 40  # binary, not text
    first = await store.reserve(account.id, 2, "req_k1", claim(account.id))
    assert await store.commit(first, StoredAnswer("image/png", body)) is True
    retry = await store.reserve(account.id, 2, "req_k2", claim(account.id))
    assert retry.replayed and retry.answer == StoredAnswer("image/png", body)
    # Committed without one (an answer over the bound): replayed, with nothing to serve.
    plain = await store.reserve(account.id, 2, "req_k3", claim(account.id, key="retry-2"))
    await store.commit(plain)
    again = await store.reserve(account.id, 2, "req_k4", claim(account.id, key="retry-2"))
    assert again.replayed and again.answer is None
    assert await balance(store, account.id) == 6


async def test_a_kept_answer_expires_with_its_key(backend: Backend) -> None:
    store, dump = backend
    account, _ = await store.create_account(credits=10, plan="free")
    first = await store.reserve(account.id, 1, "req_e1", claim(account.id, window_s=0.3))
    await store.commit(first, StoredAnswer("image/png", b"\x89PNG" + b"\0" * 100))
    await anyio.sleep(0.5)
    await store.sweep_stale(600)
    later = await store.reserve(account.id, 1, "req_e2", claim(account.id, window_s=0.3))
    assert not later.replayed and later.answer is None
    held = dump()
    assert 'INSERT INTO "idempotency_answers"' not in held and "answer_type" not in held, "the answer is gone"
