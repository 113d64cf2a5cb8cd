"""A user's open sockets on every gateway together, so that TAXI_MAX_SOCKETS_PER_USER
holds across gateways, and at once when many open together.

Each socket is a row in `open_sockets` from when it joins its user until it closes.
Opening one takes a lock on the user (an advisory lock, held to the end of its short
transaction), adds the row, and takes out the rows beyond the newest
TAXI_MAX_SOCKETS_PER_USER: those sockets make room (closed with 4011, wherever they
are). Under the lock, concurrent opens of one user's sockets take turns, so each one
finds the others and no two pick the same socket to close.

Each gateway records a sign of life every few seconds; the rows of one that stopped
(killed without a word) are removed with it by the next gateway that looks. Until
then its sockets are the first to make room, being the oldest, or count a little
longer than they live.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from typing import Final

from shared.db import DATABASE_OUTAGE, Database

log = logging.getLogger(__name__)

# How often a gateway says it is alive, and how long one can stay silent before its
# rows are removed.
BEAT_SECONDS: Final = 5.0
DEAD_AFTER_SECONDS: Final = 30.0

# The sockets that make room: (socket id, gateway id).
Replaced = list[tuple[str, str]]


class OpenSockets:
    def __init__(self, database: Database, gateway_id: str, max_per_user: int) -> None:
        self._database = database
        self.gateway_id = gateway_id
        self._max = max_per_user

    async def opened(self, user_id: int, socket_id: str) -> Replaced:
        """Count a socket of the user's in; the sockets of theirs that must now close."""
        async with self._database.pool.acquire() as conn, conn.transaction():
            await conn.execute(
                "SELECT pg_advisory_xact_lock(hashtextextended('sockets:' || $1::bigint, 0))",
                user_id,
            )
            await conn.execute(
                "INSERT INTO open_sockets (id, user_id, gateway) VALUES ($1, $2, $3)",
                uuid.UUID(socket_id),
                user_id,
                self.gateway_id,
            )
            rows = await conn.fetch(
                """
                DELETE FROM open_sockets WHERE id IN (
                    SELECT id FROM open_sockets WHERE user_id = $1
                    ORDER BY opened_at DESC, id OFFSET $2
                )
                RETURNING id, gateway
                """,
                user_id,
                self._max,
            )
        return [(row["id"].hex, row["gateway"]) for row in rows]

    async def closed(self, socket_id: str) -> None:
        await self._database.pool.execute(
            "DELETE FROM open_sockets WHERE id = $1", uuid.UUID(socket_id)
        )

    async def start(self) -> None:
        """This gateway, before its first socket opens."""
        await self._beat()

    async def run(self) -> None:
        """Say this gateway is alive, and remove what gateways gone silent left."""
        while True:
            await asyncio.sleep(BEAT_SECONDS)
            try:
                await self._beat()
            except DATABASE_OUTAGE as exc:
                log.warning("gateway heartbeat paused error=%r", exc)

    async def stop(self) -> None:
        """This gateway's rows go with it (its sockets are closing)."""
        await self._database.pool.execute("DELETE FROM gateways WHERE id = $1", self.gateway_id)

    async def _beat(self) -> None:
        async with self._database.pool.acquire() as conn, conn.transaction():
            await conn.execute(
                """
                INSERT INTO gateways (id) VALUES ($1)
                ON CONFLICT (id) DO UPDATE SET seen_at = clock_timestamp()
                """,
                self.gateway_id,
            )
            await conn.execute(
                "DELETE FROM gateways"
                " WHERE seen_at < clock_timestamp() - make_interval(secs => $1)",
                DEAD_AFTER_SECONDS,
            )
