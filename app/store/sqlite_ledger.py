"""The embedded store's credit ledger: each function is the body of one write transaction
(app/store/sqlite.py runs it in `transaction`), so a balance never changes half-way.

Every balance change is a single UPDATE guarded by `credits >= amount`, so two processes sharing
the file cannot overdraw an account; the Idempotency-Key record rides on the reservation.
"""

from __future__ import annotations

import sqlite3

from app.store.base import (
    IdempotencyClaim,
    IdempotencyInFlight,
    IdempotencyMismatch,
    InsufficientCredits,
    Reservation,
    StoredAnswer,
    UnknownAccount,
    now,
)


def balance(db: sqlite3.Connection, account_id: str) -> int:
    row = db.execute("SELECT credits FROM accounts WHERE id = ?", (account_id,)).fetchone()
    return int(row[0]) if row else 0


def adjust(db: sqlite3.Connection, account_id: str, delta: int, reason: str, clamp: bool) -> int:
    row = db.execute("SELECT credits FROM accounts WHERE id = ?", (account_id,)).fetchone()
    if row is None:
        raise UnknownAccount(account_id)
    held = int(row[0])
    if held + delta < 0 and not clamp:
        raise InsufficientCredits(held, -delta)
    moved = max(delta, -held)  # clamped: down to zero
    db.execute("UPDATE accounts SET credits = ? WHERE id = ?", (held + moved, account_id))
    db.execute(
        "INSERT INTO ledger (account_id, delta, reason, at) VALUES (?, ?, ?, ?)",
        (account_id, moved, reason, now()),
    )
    return held + moved


def _replay(
    db: sqlite3.Connection, account_id: str, reservation_id: str, claim: IdempotencyClaim
) -> Reservation | None:
    """A request completed under the key: its replayed reservation (0 credits, with the answer its commit
    kept); one in flight: IdempotencyInFlight; another request: IdempotencyMismatch; None: no live record."""
    seen = db.execute(
        "SELECT fingerprint, done FROM idempotency WHERE key = ? AND expires_at > ?", (claim.key, now())
    ).fetchone()
    if seen is None:
        return None
    if seen[0] != claim.fingerprint:
        raise IdempotencyMismatch()
    if not seen[1]:
        raise IdempotencyInFlight()
    kept = db.execute("SELECT content_type, body FROM idempotency_answers WHERE key = ?", (claim.key,)).fetchone()
    answer = None if kept is None else StoredAnswer(kept[0], bytes(kept[1]))
    left = balance(db, account_id)
    return Reservation(reservation_id, account_id, 0, left, claim, replayed=True, answer=answer)


def _claim(db: sqlite3.Connection, claim: IdempotencyClaim, reservation_id: str) -> None:
    # An expired record under the key may still be there: the new request replaces it.
    db.execute(
        "INSERT OR REPLACE INTO idempotency (key, fingerprint, reservation_id, done, expires_at) VALUES (?, ?, ?, 0, ?)",
        (claim.key, claim.fingerprint, reservation_id, now() + claim.window_s),
    )
    db.execute("DELETE FROM idempotency_answers WHERE key = ?", (claim.key,))


def reserve(
    db: sqlite3.Connection,
    account_id: str,
    amount: int,
    reservation_id: str,
    idempotency: IdempotencyClaim | None,
    hold_s: float,
) -> Reservation:
    """Store.reserve: a reservation id reserves once; a completed request under the key is replayed."""
    if db.execute("SELECT 1 FROM reservations WHERE id = ?", (reservation_id,)).fetchone():
        return Reservation(reservation_id, account_id, amount, balance(db, account_id), idempotency)
    if idempotency is not None and (replay := _replay(db, account_id, reservation_id, idempotency)) is not None:
        return replay
    row = db.execute(
        "UPDATE accounts SET credits = credits - ? WHERE id = ? AND credits >= ? RETURNING credits",
        (amount, account_id, amount),
    ).fetchone()
    if row is None:
        raise InsufficientCredits(balance(db, account_id), amount)
    db.execute(
        "INSERT INTO reservations (id, account_id, amount, created_at, hold_until) VALUES (?, ?, ?, ?, ?)",
        (reservation_id, account_id, amount, now(), now() + hold_s),
    )
    if idempotency is not None:
        _claim(db, idempotency, reservation_id)
    return Reservation(reservation_id, account_id, amount, int(row[0]), idempotency)


def commit(db: sqlite3.Connection, reservation: Reservation, answer: StoredAnswer | None, charged: int) -> bool:
    """Store.commit: the DELETE decides; a reservation already gone was charged only if the ledger says so."""
    if not db.execute("DELETE FROM reservations WHERE id = ?", (reservation.id,)).rowcount:
        already = db.execute("SELECT 1 FROM ledger WHERE ref = ? AND reason = 'charge'", (reservation.id,)).fetchone()
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


def refund_row(db: sqlite3.Connection, reservation_id: str, account_id: str, amount: int) -> None:
    # The DELETE decides: only the first refund (or sweep) of a reservation pays back.
    if db.execute("DELETE FROM reservations WHERE id = ?", (reservation_id,)).rowcount:
        db.execute("UPDATE accounts SET credits = credits + ? WHERE id = ?", (amount, account_id))
        # The key is free again: nothing was charged under it, so a retry must run.
        db.execute("DELETE FROM idempotency WHERE reservation_id = ?", (reservation_id,))


def refund(db: sqlite3.Connection, reservation: Reservation) -> int:
    refund_row(db, reservation.id, reservation.account_id, reservation.amount)
    return int(db.execute("SELECT credits FROM accounts WHERE id = ?", (reservation.account_id,)).fetchone()[0])


def sweep(db: sqlite3.Connection, older_than_s: float) -> int:
    """Store.sweep_stale: refund what is held past its age and hold, drop expired idempotency records."""
    stale = db.execute(
        "SELECT id, account_id, amount FROM reservations WHERE created_at < ? AND hold_until < ?",
        (now() - older_than_s, now()),
    ).fetchall()
    for reservation_id, account_id, amount in stale:
        refund_row(db, reservation_id, account_id, amount)
    db.execute("DELETE FROM idempotency WHERE expires_at < ?", (now(),))
    db.execute("DELETE FROM idempotency_answers WHERE key NOT IN (SELECT key FROM idempotency)")
    return len(stale)
