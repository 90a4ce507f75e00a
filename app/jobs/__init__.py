"""Asynchronous jobs and batches: submission, queue engines (SQLite, Redis streams), workers, webhooks."""
