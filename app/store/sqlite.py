"""Embedded store: one SQLite file in the data directory.

Every balance change is a single UPDATE guarded by `credits >= amount`, so two
processes sharing the file cannot overdraw an account. Writes are fsynced
(synchronous=FULL): a restart never loses a credit.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import anyio.to_thread

from app.store.base import (
    Account,
    IdempotencyClaim,
    IdempotencyInFlight,
    IdempotencyMismatch,
    InsufficientCredits,
    Reservation,
    StoredAnswer,
    UnknownAccount,
    hash_api_key,
    new_account_id,
    new_api_key,
    now,
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
        account = Account(
            id=new_account_id(),
            plan=plan,
            credits=credits,
            rate_limit=rate_limit,
            revoked=False,
            created_at=now(),
            label=label,
            unlimited=unlimited,
        )

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
        def op(db: sqlite3.Connection) -> int:
            row = db.execute("SELECT credits FROM accounts WHERE id = ?", (account_id,)).fetchone()
            if row is None:
                raise UnknownAccount(account_id)
            balance = int(row[0])
            if balance + delta < 0 and not clamp:
                raise InsufficientCredits(balance, -delta)
            moved = max(delta, -balance)  # clamped: down to zero
            db.execute("UPDATE accounts SET credits = ? WHERE id = ?", (balance + moved, account_id))
            db.execute(
                "INSERT INTO ledger (account_id, delta, reason, at) VALUES (?, ?, ?, ?)",
                (account_id, moved, reason, now()),
            )
            return balance + moved

        return await self._run(lambda db: self._tx(db, op))

    async def reserve(
        self,
        account_id: str,
        amount: int,
        reservation_id: str,
        idempotency: IdempotencyClaim | None = None,
        *,
        hold_s: float = 0.0,
    ) -> Reservation:
        def balance(db: sqlite3.Connection) -> int:
            row = db.execute("SELECT credits FROM accounts WHERE id = ?", (account_id,)).fetchone()
            return int(row[0]) if row else 0

        def op(db: sqlite3.Connection) -> Reservation:
            if db.execute("SELECT 1 FROM reservations WHERE id = ?", (reservation_id,)).fetchone():
                return Reservation(reservation_id, account_id, amount, balance(db), idempotency)
            if idempotency is not None:
                seen = db.execute(
                    "SELECT fingerprint, done FROM idempotency WHERE key = ? AND expires_at > ?",
                    (idempotency.key, now()),
                ).fetchone()
                if seen is not None:
                    if seen[0] != idempotency.fingerprint:
                        raise IdempotencyMismatch()
                    if not seen[1]:
                        raise IdempotencyInFlight()
                    kept = db.execute(
                        "SELECT content_type, body FROM idempotency_answers WHERE key = ?", (idempotency.key,)
                    ).fetchone()
                    answer = None if kept is None else StoredAnswer(kept[0], bytes(kept[1]))
                    return Reservation(
                        reservation_id, account_id, 0, balance(db), idempotency, replayed=True, answer=answer
                    )
            row = db.execute(
                "UPDATE accounts SET credits = credits - ? WHERE id = ? AND credits >= ? RETURNING credits",
                (amount, account_id, amount),
            ).fetchone()
            if row is None:
                raise InsufficientCredits(balance(db), amount)
            db.execute(
                "INSERT INTO reservations (id, account_id, amount, created_at, hold_until) VALUES (?, ?, ?, ?, ?)",
                (reservation_id, account_id, amount, now(), now() + hold_s),
            )
            if idempotency is not None:
                # An expired record under the key may still be there: the new request replaces it.
                db.execute(
                    "INSERT OR REPLACE INTO idempotency (key, fingerprint, reservation_id, done, expires_at)"
                    " VALUES (?, ?, ?, 0, ?)",
                    (idempotency.key, idempotency.fingerprint, reservation_id, now() + idempotency.window_s),
                )
                db.execute("DELETE FROM idempotency_answers WHERE key = ?", (idempotency.key,))
            return Reservation(reservation_id, account_id, amount, int(row[0]), idempotency)

        return await self._run(lambda db: self._tx(db, op))

    async def commit(
        self, reservation: Reservation, answer: StoredAnswer | None = None, amount: int | None = None
    ) -> bool:
        charged = reservation.amount if amount is None else amount
        if not 0 <= charged <= reservation.amount:
            raise ValueError(f"cannot charge {charged} of a reservation of {reservation.amount}")

        def op(db: sqlite3.Connection) -> bool:
            if not db.execute("DELETE FROM reservations WHERE id = ?", (reservation.id,)).rowcount:
                already = db.execute(
                    "SELECT 1 FROM ledger WHERE ref = ? AND reason = 'charge'", (reservation.id,)
                ).fetchone()
                return already is not None
            db.execute(
                "INSERT INTO ledger (account_id, delta, reason, ref, at) VALUES (?, ?, 'charge', ?, ?)",
                (reservation.account_id, -charged, reservation.id, now()),
            )
            if charged < reservation.amount:
                db.execute(
                    "UPDATE accounts SET credits = credits + ? WHERE id = ?",
                    (reservation.amount - charged, reservation.account_id),
                )
            if reservation.idempotency is not None:
                db.execute(
                    "UPDATE idempotency SET done = 1, expires_at = ? WHERE reservation_id = ?",
                    (now() + reservation.idempotency.window_s, reservation.id),
                )
                if answer is not None:
                    db.execute(
                        "INSERT OR REPLACE INTO idempotency_answers (key, content_type, body) VALUES (?, ?, ?)",
                        (reservation.idempotency.key, answer.content_type, answer.body),
                    )
            return True

        return await self._run(lambda db: self._tx(db, op))

    @staticmethod
    def _refund_row(db: sqlite3.Connection, reservation_id: str, account_id: str, amount: int) -> None:
        # The DELETE decides: only the first refund (or sweep) of a reservation pays back.
        if db.execute("DELETE FROM reservations WHERE id = ?", (reservation_id,)).rowcount:
            db.execute("UPDATE accounts SET credits = credits + ? WHERE id = ?", (amount, account_id))
            # The key is free again: nothing was charged under it, so a retry must run.
            db.execute("DELETE FROM idempotency WHERE reservation_id = ?", (reservation_id,))

    async def refund(self, reservation: Reservation) -> int:
        def op(db: sqlite3.Connection) -> int:
            self._refund_row(db, reservation.id, reservation.account_id, reservation.amount)
            return int(db.execute("SELECT credits FROM accounts WHERE id = ?", (reservation.account_id,)).fetchone()[0])

        return await self._run(lambda db: self._tx(db, op))

    async def sweep_stale(self, older_than_s: float) -> int:
        def op(db: sqlite3.Connection) -> int:
            stale = db.execute(
                "SELECT id, account_id, amount FROM reservations WHERE created_at < ? AND hold_until < ?",
                (now() - older_than_s, now()),
            ).fetchall()
            for reservation_id, account_id, amount in stale:
                self._refund_row(db, reservation_id, account_id, amount)
            db.execute("DELETE FROM idempotency WHERE expires_at < ?", (now(),))
            db.execute("DELETE FROM idempotency_answers WHERE key NOT IN (SELECT key FROM idempotency)")
            return len(stale)

        return await self._run(lambda db: self._tx(db, op))

    async def ping(self) -> None:
        await self._run(lambda db: db.execute("SELECT 1").fetchone())

    async def close(self) -> None:
        await self._run(lambda db: db.close())
