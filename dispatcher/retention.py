"""Pruning by age: the notification log, the processed-command ids and stale outbox rows.

Each table is emptied of old rows in small batches, each its own short statement,
so that pruning a backlog never holds locks or grows one transaction for long.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from shared.db import Connection, Database

# PROTOCOL C1: a request_id has no second effect within 24 hours, so its command id
# is kept at least that long whatever the notification retention.
IDEMPOTENCY_WINDOW = timedelta(hours=24)

# Each table and the column that dates its rows.
_AGED_BY = {
    "notifications": "created",
    "processed_commands": "processed",
    "outbox": "created",
    "refresh_tokens": "expires",
}


async def prune(
    database_or_conn: Database | Connection,
    now: datetime,
    retention_seconds: int,
    batch: int = 1000,
) -> dict[str, int]:
    """Delete rows older than the retention (processed commands: older than the
    retention or 24 hours, whichever is longer) and refresh tokens that expired;
    return how many went, per table."""
    retention = timedelta(seconds=retention_seconds)
    cutoffs = {
        "notifications": now - retention,
        "processed_commands": now - max(retention, IDEMPOTENCY_WINDOW),
        "outbox": now - retention,
        "refresh_tokens": now,
    }
    return {
        table: await _delete_older(database_or_conn, table, cutoff, batch)
        for table, cutoff in cutoffs.items()
    }


async def _delete_older(
    database_or_conn: Database | Connection, table: str, cutoff: datetime, batch: int
) -> int:
    column = _AGED_BY[table]
    # SKIP LOCKED: rows the outbox relay holds while publishing are its to delete,
    # and pruning never waits behind it.
    statement = f"""
        DELETE FROM {table} WHERE ctid = ANY(ARRAY(
            SELECT ctid FROM {table} WHERE {column} < $1 LIMIT $2 FOR UPDATE SKIP LOCKED))
    """
    executor = database_or_conn.pool if isinstance(database_or_conn, Database) else database_or_conn
    deleted = 0
    while True:
        status = await executor.execute(statement, cutoff, batch)
        count = int(status.rsplit(" ", 1)[1])  # "DELETE <n>"
        deleted += count
        if count < batch:
            return deleted
