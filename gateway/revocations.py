"""Closing the sockets of users whose sessions ended.

Deactivating a user or changing their password stamps `users.sessions_revoked_at`
(a trigger, whatever path made the change). Every TAXI_REVOKE_SECONDS at most, each
gateway asks Postgres which users connected here had their sessions ended since
it last looked, and closes with 4003 every socket of theirs opened with a token
issued before that moment. One indexed query a round, whatever the number of
sockets; their handshakes already refuse such tokens.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import datetime, timedelta

from gateway.connected import ConnectedUsers
from shared.db import DATABASE_OUTAGE, Database
from shared.wire import CloseCode

log = logging.getLogger(__name__)


class Revocations:
    def __init__(self, database: Database, users: ConnectedUsers, interval_seconds: float) -> None:
        self._database = database
        self._users = users
        self._interval = interval_seconds
        # Revocations stamped after this (the database's clock) are still to act on.
        self._since: datetime | None = None

    async def run(self) -> None:
        while True:
            try:
                await self.check()
            except DATABASE_OUTAGE as exc:
                log.warning("revocation check paused error=%r", exc)
            await asyncio.sleep(self._interval)

    async def check(self) -> int:
        """Close the sockets of sessions ended since the last check; how many."""
        async with self._database.pool.acquire() as conn:
            now = await conn.fetchval("SELECT clock_timestamp()")
            since = self._since or now
            rows = await conn.fetch(
                "SELECT id, sessions_revoked_at FROM users WHERE sessions_revoked_at >= $1",
                # Looking back a round further: a change committed just after the
                # last look may carry a stamp from just before it. A socket already
                # told to close is not told twice.
                since - _slack(self._interval),
            )
        self._since = now
        closed = 0
        for row in rows:
            connected = self._users.get(row["id"])
            if connected is None:
                continue
            revoked = row["sessions_revoked_at"].timestamp()
            for socket in connected.sockets:
                if socket.issued_at < revoked:
                    socket.close_after_sending(CloseCode.REVOKED, "session ended: log in again")
                    closed += 1
        if closed:
            log.info("sockets closed for ended sessions count=%d", closed)
        return closed


def _slack(interval_seconds: float) -> timedelta:
    return timedelta(seconds=interval_seconds)
