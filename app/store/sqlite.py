"""Embedded store: one SQLite file in the data directory.

Every balance change is a single UPDATE guarded by `credits >= amount`, so two
processes sharing the file cannot overdraw an account (the ledger's transactions:
app/store/sqlite_ledger.py). Writes are fsynced (synchronous=FULL): a restart
never loses a credit. `open_database` and `transaction` serve the job queue's file too.
"""

from __future__ import annotations

import functools
import logging
import os
import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import anyio.to_thread

from app.store import sqlite_ledger as ledger
from app.store.base import (
    Account,
    IdempotencyClaim,
    Reservation,
    StoredAnswer,
    UnknownAccount,
    charged_of,
    hash_api_key,
    new_account,
    new_api_key,
)

log = logging.getLogger("cutout.store")

T = TypeVar("T")

SCHEMA = """
CREATE TABLE IF NOT EXISTS accounts (
    id TEXT PRIMARY KEY,
    key_hash TEXT NOT NULL UNIQUE,
    plan TEXT NOT NULL,
    credits INTEGER NOT NULL CHECK (credits >= 0),
    rate_limit TEXT,
    revoked INTEGER NOT NULL DEFAULT 0,
    created_at REAL NOT NULL,
    label TEXT,
    unlimited INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS reservations (
    id TEXT PRIMARY KEY,
    account_id TEXT NOT NULL REFERENCES accounts(id),
    amount INTEGER NOT NULL,
    created_at REAL NOT NULL,
    hold_until REAL NOT NULL DEFAULT 0  -- the sweeper leaves it held until then (asynchronous jobs)
);
CREATE TABLE IF NOT EXISTS ledger (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    account_id TEXT NOT NULL,
    delta INTEGER NOT NULL,
    reason TEXT NOT NULL,
    ref TEXT,
    at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS ledger_ref ON ledger(ref);
CREATE TABLE IF NOT EXISTS idempotency (
    key TEXT PRIMARY KEY,
    fingerprint TEXT NOT NULL,
    reservation_id TEXT NOT NULL,
    done INTEGER NOT NULL DEFAULT 0,
    expires_at REAL NOT NULL
);
-- The answer a completed request under the key delivered, served to its retries.
CREATE TABLE IF NOT EXISTS idempotency_answers (
    key TEXT PRIMARY KEY,
    content_type TEXT NOT NULL,
    body BLOB NOT NULL
);
"""

# Columns added since the first schema: a database made before them gets them on open.
ADDED_COLUMNS = {"label": "TEXT", "unlimited": "INTEGER NOT NULL DEFAULT 0"}

_ACCOUNT_COLUMNS = "id, plan, credits, rate_limit, revoked, created_at, label, unlimited"


def _account(row: tuple[Any, ...]) -> Account:
    return Account(
        id=row[0],
        plan=row[1],
        credits=row[2],
        rate_limit=row[3],
        revoked=bool(row[4]),
        created_at=row[5],
        label=row[6],
        unlimited=bool(row[7]),
    )


def _private(path: Path) -> None:
    """The data dir 0700 and the database files 0600: they hold key digests and balances.

    The file is created 0600 before SQLite opens it; SQLite gives its -wal and -shm files the
    database file's mode.
    """
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    try:
        path.parent.chmod(0o700)
    except PermissionError:  # a directory we do not own (a mount point): leave it, say so
        log.warning("cannot make %s private (0700): not its owner", path.parent)
    os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))
    for name in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
        if name.exists():
            name.chmod(0o600)


def open_database(path: Path, schema: str) -> sqlite3.Connection:
    """A private database file in WAL mode, every commit durable (synchronous=FULL), with `schema` applied:
    the store's and the job queue's alike."""
    _private(path)
    db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None, timeout=30)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    db.executescript(schema)
    return db


def transaction(db: sqlite3.Connection, fn: Callable[[sqlite3.Connection], T]) -> T:
    """`fn` in one write transaction, committed or rolled back whole: the store's and the job queue's.
    IMMEDIATE takes the write lock up front, so concurrent processes serialise here."""
    db.execute("BEGIN IMMEDIATE")
    try:
        result = fn(db)
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")
    return result


class SqliteStore:
    def __init__(self, path: Path) -> None:
        self._db = open_database(path, SCHEMA)
        self._lock = threading.Lock()
        columns = {row[1] for row in self._db.execute("PRAGMA table_info(reservations)")}
        if "hold_until" not in columns:  # a data dir from before asynchronous jobs
            self._db.execute("ALTER TABLE reservations ADD COLUMN hold_until REAL NOT NULL DEFAULT 0")
        have = {row[1] for row in self._db.execute("PRAGMA table_info(accounts)")}
        for column, kind in ADDED_COLUMNS.items():
            if column not in have:
                self._db.execute(f"ALTER TABLE accounts ADD COLUMN {column} {kind}")

    async def _run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        def locked() -> T:
            with self._lock:
                return fn(self._db)

        return await anyio.to_thread.run_sync(locked)

    async def _in_transaction(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        return await self._run(lambda db: self._tx(db, fn))

    @staticmethod
    def _tx(db: sqlite3.Connection, fn: Callable[[sqlite3.Connection], T]) -> T:
        return transaction(db, fn)

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

        def op(db: sqlite3.Connection) -> None:
            db.execute(
                "INSERT INTO accounts (id, key_hash, plan, credits, rate_limit, revoked, created_at, label, unlimited)"
                " VALUES (?, ?, ?, ?, ?, 0, ?, ?, ?)",
                (account.id, hash_api_key(key), plan, credits, rate_limit, account.created_at, label, int(unlimited)),
            )
            db.execute(
                "INSERT INTO ledger (account_id, delta, reason, at) VALUES (?, ?, 'create', ?)",
                (account.id, credits, account.created_at),
            )

        await self._run(lambda db: self._tx(db, op))
        return account, key

    async def account_by_key(self, api_key: str) -> Account | None:
        digest = hash_api_key(api_key)
        row = await self._run(
            lambda db: db.execute(f"SELECT {_ACCOUNT_COLUMNS} FROM accounts WHERE key_hash = ?", (digest,)).fetchone()
        )
        return None if row is None else _account(row)

    async def get_account(self, account_id: str) -> Account | None:
        row = await self._run(
            lambda db: db.execute(f"SELECT {_ACCOUNT_COLUMNS} FROM accounts WHERE id = ?", (account_id,)).fetchone()
        )
        return _account(row) if row else None

    async def list_accounts(self) -> list[Account]:
        rows = await self._run(
            lambda db: db.execute(f"SELECT {_ACCOUNT_COLUMNS} FROM accounts ORDER BY created_at").fetchall()
        )
        return [_account(r) for r in rows]

    async def _update_account(self, account_id: str, sql: str, params: tuple[Any, ...]) -> None:
        cur = await self._run(lambda db: db.execute(sql, (*params, account_id)))
        if cur.rowcount == 0:
            raise UnknownAccount(account_id)

    async def revoke(self, account_id: str) -> None:
        await self._update_account(account_id, "UPDATE accounts SET revoked = 1 WHERE id = ?", ())

    async def rotate_key(self, account_id: str) -> str:
        key = new_api_key()
        await self._update_account(account_id, "UPDATE accounts SET key_hash = ? WHERE id = ?", (hash_api_key(key),))
        return key

    async def set_label(self, account_id: str, label: str | None) -> None:
        await self._update_account(account_id, "UPDATE accounts SET label = ? WHERE id = ?", (label,))

    async def set_plan(self, account_id: str, plan: str, rate_limit: str | None) -> None:
        await self._update_account(
            account_id, "UPDATE accounts SET plan = ?, rate_limit = ? WHERE id = ?", (plan, rate_limit)
        )

    async def adjust_credits(self, account_id: str, delta: int, reason: str, clamp: bool = False) -> int:
        return await self._in_transaction(
            functools.partial(ledger.adjust, account_id=account_id, delta=delta, reason=reason, clamp=clamp)
        )

    async def reserve(
        self,
        account_id: str,
        amount: int,
        reservation_id: str,
        idempotency: IdempotencyClaim | None = None,
        *,
        hold_s: float = 0.0,
    ) -> Reservation:
        return await self._in_transaction(
            functools.partial(
                ledger.reserve,
                account_id=account_id,
                amount=amount,
                reservation_id=reservation_id,
                idempotency=idempotency,
                hold_s=hold_s,
            )
        )

    async def commit(
        self, reservation: Reservation, answer: StoredAnswer | None = None, amount: int | None = None
    ) -> bool:
        charged = charged_of(reservation, amount)
        return await self._in_transaction(
            functools.partial(ledger.commit, reservation=reservation, answer=answer, charged=charged)
        )

    async def refund(self, reservation: Reservation) -> int:
        return await self._in_transaction(functools.partial(ledger.refund, reservation=reservation))

    async def sweep_stale(self, older_than_s: float) -> int:
        return await self._in_transaction(functools.partial(ledger.sweep, older_than_s=older_than_s))

    async def ping(self) -> None:
        await self._run(lambda db: db.execute("SELECT 1").fetchone())

    async def close(self) -> None:
        await self._run(lambda db: db.close())
