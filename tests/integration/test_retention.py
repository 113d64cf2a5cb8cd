"""dispatcher.retention.prune: old notifications, command ids and outbox rows go, by age.

On a database of this module's own: workers of the run prune the run's database too,
and would take these tests' old rows first.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest

from dispatcher.retention import prune
from shared.db import Database
from shared.settings import Settings
from tests.integration.test_repository import create_user

NOW = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
HOUR = timedelta(hours=1)
DAY = timedelta(days=1)
TABLES = ("notifications", "processed_commands", "outbox", "refresh_tokens")


@pytest.fixture
async def conn(module_database_url: str) -> AsyncIterator[asyncpg.Connection]:
    connection = await asyncpg.connect(module_database_url)
    yield connection
    await connection.execute(f"TRUNCATE {', '.join(TABLES)}")
    await connection.close()


class Rows:
    """Rows of the pruned tables, dated, with the keys to find them again."""

    def __init__(self, conn: asyncpg.Connection, user_id: int) -> None:
        self._conn = conn
        self._user_id = user_id
        self._seq = 0

    async def notification(self, created: datetime) -> int:
        self._seq += 1
        await self._conn.execute(
            "INSERT INTO notifications (user_id, seq, created, frame_type, body)"
            " VALUES ($1, $2, $3, 'trip.requested', '\\x7b7d')",
            self._user_id,
            self._seq,
            created,
        )
        return self._seq

    async def processed_command(self, processed: datetime) -> uuid.UUID:
        command_id = uuid.uuid4()
        await self._conn.execute(
            "INSERT INTO processed_commands (id, processed) VALUES ($1, $2)",
            command_id,
            processed,
        )
        return command_id

    async def refresh_token(self, expires: datetime) -> uuid.UUID:
        jti = uuid.uuid4()
        await self._conn.execute(
            "INSERT INTO refresh_tokens (jti, family, user_id, expires) VALUES ($1, $1, $2, $3)",
            jti,
            self._user_id,
            expires,
        )
        return jti

    async def outbox(self, created: datetime) -> int:
        outbox_id: int = await self._conn.fetchval(
            "INSERT INTO outbox (created, routing_key, body, exchange)"
            " VALUES ($1, 'user.1', '\\x7b7d', 'test') RETURNING id",
            created,
        )
        return outbox_id

    async def left(self) -> dict[str, set[Any]]:
        return {
            "notifications": await self._column("SELECT seq FROM notifications"),
            "processed_commands": await self._column("SELECT id FROM processed_commands"),
            "outbox": await self._column("SELECT id FROM outbox"),
            "refresh_tokens": await self._column("SELECT jti FROM refresh_tokens"),
        }

    async def _column(self, query: str) -> set[Any]:
        return {row[0] for row in await self._conn.fetch(query)}


@pytest.fixture
async def rows(conn: asyncpg.Connection) -> Rows:
    return Rows(conn, (await create_user(conn, "rider")).id)


class CountingConnection:
    """The connection, counting the statements run on it."""

    def __init__(self, conn: asyncpg.Connection) -> None:
        self._conn = conn
        self.statements: list[str] = []

    async def execute(self, query: str, *args: Any) -> str:
        self.statements.append(query)
        return str(await self._conn.execute(query, *args))


async def test_rows_older_than_the_retention_go_and_newer_ones_stay(
    conn: asyncpg.Connection, rows: Rows
) -> None:
    old_notifications = {await rows.notification(NOW - 2 * HOUR - n * HOUR) for n in range(3)}
    new_notifications = {await rows.notification(NOW - HOUR + n * HOUR) for n in range(2)}
    old_outbox = {await rows.outbox(NOW - 3 * HOUR)}
    new_outbox = {await rows.outbox(NOW - timedelta(minutes=30))}
    # Command ids stay 24 hours even though the retention is shorter.
    old_commands = {await rows.processed_command(NOW - DAY - HOUR)}
    young_commands = {await rows.processed_command(NOW - 3 * HOUR)}
    # Refresh tokens go once they expired, whatever the retention.
    await rows.refresh_token(NOW - timedelta(seconds=1))
    live_tokens = {await rows.refresh_token(NOW + HOUR)}

    pruned = await prune(conn, NOW, retention_seconds=2 * 3600 - 1)

    assert pruned == {"notifications": 3, "processed_commands": 1, "outbox": 1, "refresh_tokens": 1}
    assert await rows.left() == {
        "notifications": new_notifications,
        "processed_commands": young_commands,
        "outbox": new_outbox,
        "refresh_tokens": live_tokens,
    }
    assert old_notifications.isdisjoint(new_notifications)
    assert old_outbox.isdisjoint(new_outbox)
    assert old_commands.isdisjoint(young_commands)


async def test_a_retention_longer_than_a_day_keeps_command_ids_that_long(
    conn: asyncpg.Connection, rows: Rows
) -> None:
    kept = {await rows.processed_command(NOW - 2 * DAY)}
    await rows.processed_command(NOW - 3 * DAY - HOUR)

    pruned = await prune(conn, NOW, retention_seconds=3 * 24 * 3600)

    assert pruned == {"notifications": 0, "processed_commands": 1, "outbox": 0, "refresh_tokens": 0}
    assert (await rows.left())["processed_commands"] == kept


async def test_a_row_exactly_as_old_as_the_retention_stays(
    conn: asyncpg.Connection, rows: Rows
) -> None:
    at_the_limit = {await rows.notification(NOW - HOUR)}

    assert (await prune(conn, NOW, retention_seconds=3600))["notifications"] == 0
    assert (await rows.left())["notifications"] == at_the_limit


async def test_nothing_old_prunes_nothing(conn: asyncpg.Connection, rows: Rows) -> None:
    await rows.notification(NOW)
    counting = CountingConnection(conn)

    pruned = await prune(counting, NOW, retention_seconds=60)  # type: ignore[arg-type]

    assert pruned == dict.fromkeys(TABLES, 0)
    assert len(counting.statements) == len(TABLES)


@pytest.mark.parametrize(("old", "statements"), [(5, 3), (4, 3), (1, 1), (0, 1)])
async def test_old_rows_go_in_batches_until_a_batch_comes_back_short(
    conn: asyncpg.Connection, rows: Rows, old: int, statements: int
) -> None:
    for n in range(old):
        await rows.notification(NOW - DAY - n * HOUR)
        await rows.outbox(NOW - DAY - n * HOUR)
    kept = {await rows.notification(NOW)}
    counting = CountingConnection(conn)

    pruned = await prune(counting, NOW, retention_seconds=3600, batch=2)  # type: ignore[arg-type]

    assert pruned == {
        "notifications": old,
        "processed_commands": 0,
        "outbox": old,
        "refresh_tokens": 0,
    }
    assert (await rows.left())["notifications"] == kept
    assert (await rows.left())["outbox"] == set()
    per_table = {
        table: sum(f"DELETE FROM {table} " in s for s in counting.statements) for table in TABLES
    }
    assert per_table == {
        "notifications": statements,
        "processed_commands": 1,
        "outbox": statements,
        "refresh_tokens": 1,
    }


async def test_prune_runs_on_the_pool_of_a_database(
    module_database_url: str, settings: Settings, rows: Rows
) -> None:
    await rows.notification(NOW - DAY)
    await rows.outbox(NOW - DAY)
    database = Database(replace(settings, database_url=module_database_url, db_pool_size=2))
    await database.start()
    try:
        pruned = await prune(database, NOW, retention_seconds=3600, batch=1)
    finally:
        await database.close()

    assert pruned == {"notifications": 1, "processed_commands": 0, "outbox": 1, "refresh_tokens": 0}
    assert await rows.left() == {table: set() for table in TABLES}
