"""The outbox: notifications stored with the change that caused them, then published.

They are written in the transaction of the change (`notification_log.record`). The
worker publishes a command's notifications right after its transaction commits and,
once the broker confirmed them, deletes their rows with those of every other command
published meanwhile, every DELETE_EVERY_SECONDS (`Published`): one statement and one
commit for them all, not one per command. Whatever a crash
or a broker outage left behind, the relay publishes later: a notification is sent
at least once, and its event id (and a user's `seq`) lets a duplicate be dropped.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import datetime

import asyncpg
import orjson

from dispatcher import periodic
from dispatcher.metrics import OUTBOX_BACKLOG
from dispatcher.notifications import Notification
from dispatcher.publisher import NotificationPublisher
from shared.db import Database

log = logging.getLogger(__name__)

# The worker that wrote a row publishes it itself within milliseconds; the relay
# leaves rows alone for this long so that it does not race the worker.
RELAY_GRACE_SECONDS = 5
RELAY_BATCH = 500
# Published rows are deleted together this often, well within RELAY_GRACE_SECONDS,
# so the relay does not publish again what the worker published.
DELETE_EVERY_SECONDS = 0.1


async def delete(database: Database, outbox_ids: Sequence[int]) -> None:
    await database.pool.execute("DELETE FROM outbox WHERE id = ANY($1::bigint[])", outbox_ids)


class Published:
    """The rows this worker published and has yet to delete: deleted together, in one
    statement every DELETE_EVERY_SECONDS. A worker that dies first leaves them to the
    relay, which publishes them again (at least once, never lost)."""

    def __init__(self, database: Database) -> None:
        self._database = database
        self._ids: list[int] = []

    def add(self, outbox_ids: Sequence[int]) -> None:
        self._ids.extend(outbox_ids)

    async def run(self) -> None:
        await periodic.every(DELETE_EVERY_SECONDS, self.flush, "outbox clean-up")

    async def flush(self) -> None:
        ids, self._ids = self._ids, []
        if not ids:
            return
        try:
            await delete(self._database, ids)
        except BaseException:
            self._ids[:0] = ids  # tried again next round
            raise


class OutboxRelay:
    """Publishes what the workers could not, oldest first, from any number of workers."""

    def __init__(
        self, database: Database, publisher: NotificationPublisher, interval_seconds: float = 1.0
    ) -> None:
        self._database = database
        self._publisher = publisher
        self._interval = interval_seconds

    @property
    def exchange(self) -> str:
        """The exchange whose rows this relay publishes (rows name their exchange)."""
        return self._publisher.exchange_name

    async def run(self) -> None:
        await periodic.every(self._interval, self.relay_round, "outbox relay")

    async def relay_round(self) -> None:
        """Publish everything left behind, a batch at a time, then count what waits."""
        while await self.relay_once() == RELAY_BATCH:
            pass
        OUTBOX_BACKLOG.set(await self.backlog())

    async def backlog(self) -> int:
        return int(
            await self._database.pool.fetchval(
                "SELECT count(*) FROM outbox WHERE exchange = $1", self.exchange
            )
        )

    async def relay_once(self) -> int:
        """Publish one batch of left-behind rows; return how many rows it took."""
        async with self._database.pool.acquire() as conn, conn.transaction():
            rows = await conn.fetch(
                """
                SELECT id, routing_key, body, frame_type, headers, expires FROM outbox
                WHERE exchange = $1 AND created < now() - make_interval(secs => $2)
                ORDER BY id
                LIMIT $3
                FOR UPDATE SKIP LOCKED
                """,
                self.exchange,
                RELAY_GRACE_SECONDS,
                RELAY_BATCH,
            )
            if not rows:
                return 0
            now = await conn.fetchval("SELECT now()")
            live = [_notification(row, now) for row in rows if _still_live(row, now)]
            await self._publisher.publish(live)
            await conn.execute(
                "DELETE FROM outbox WHERE id = ANY($1::bigint[])", [row["id"] for row in rows]
            )
        log.info("outbox relay published=%d expired=%d", len(live), len(rows) - len(live))
        return len(rows)


def _still_live(row: asyncpg.Record, now: datetime) -> bool:
    return row["expires"] is None or row["expires"] > now


def _notification(row: asyncpg.Record, now: datetime) -> Notification:
    ttl = None
    if row["expires"] is not None:
        ttl = max(1, int((row["expires"] - now).total_seconds()))
    return Notification(
        routing_key=row["routing_key"],
        body=bytes(row["body"]),
        frame_type=row["frame_type"],
        ttl_seconds=ttl,
        headers=orjson.loads(row["headers"]),
    )
