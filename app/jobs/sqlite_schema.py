"""The embedded queue engine's file (app/jobs/sqlite.py): its tables, how it is opened, and how
finished jobs leave it once their retention time (job_ttl_s) has passed.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from app.store.sqlite import open_database

SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    status TEXT NOT NULL,
    doc TEXT NOT NULL,
    owner TEXT,
    lease_until REAL NOT NULL DEFAULT 0,
    deadline REAL NOT NULL,
    finished_at REAL
);
CREATE INDEX IF NOT EXISTS jobs_status ON jobs(status, seq);
CREATE TABLE IF NOT EXISTS job_inputs (id TEXT PRIMARY KEY, meta TEXT NOT NULL, image BLOB, bg_image BLOB);
CREATE TABLE IF NOT EXISTS job_results (id TEXT PRIMARY KEY, body BLOB NOT NULL, expires_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS batches (id TEXT PRIMARY KEY, doc TEXT NOT NULL, created_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS webhooks (target TEXT PRIMARY KEY, due_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS submissions (
    key TEXT PRIMARY KEY, fingerprint TEXT NOT NULL, kind TEXT NOT NULL, ref TEXT NOT NULL, expires_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value BLOB NOT NULL);
"""


def open_jobs_database(path: Path) -> sqlite3.Connection:
    db = open_database(path, SCHEMA)
    # Removed rows (results, inputs: people's photos) are overwritten with zeros, not left in free pages.
    db.execute("PRAGMA secure_delete = ON")
    return db


def purge_finished(db: sqlite3.Connection, now: float, cutoff: float) -> tuple[int, int]:
    """Remove the jobs that ended before `cutoff` (record, input, result), the results past their
    expiry, the batches none of whose items is left, and expired Idempotency-Keys. Returns (jobs
    removed, rows removed)."""
    ids = [r[0] for r in db.execute("SELECT id FROM jobs WHERE finished_at < ?", (cutoff,)).fetchall()]
    rows = 0
    for job_id in ids:
        for table in ("jobs", "job_inputs", "job_results"):
            rows += db.execute(f"DELETE FROM {table} WHERE id = ?", (job_id,)).rowcount
    rows += db.execute("DELETE FROM job_results WHERE expires_at < ?", (now,)).rowcount
    rows += db.execute(
        "DELETE FROM batches WHERE created_at < ? AND NOT EXISTS"
        " (SELECT 1 FROM jobs WHERE jobs.doc LIKE '%\"batch_id\":\"' || batches.id || '\"%')",
        (cutoff,),
    ).rowcount
    db.execute("DELETE FROM submissions WHERE expires_at < ?", (now,))
    return len(ids), rows
