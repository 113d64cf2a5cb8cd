"""Closing the sockets of sessions that ended, within TAXI_REVOKE_SECONDS of the commit
that ended them, however long that transaction took.

Every end of a session is a row of `session_ends` (migration 0009): a log-out or a
reused refresh token ends one family (the tokens whose `sid` names it); deactivating
a user or changing their password ends all their sessions up to that moment (a
trigger writes the row). Each row carries the id of the transaction that wrote it
(`xid`, an `xid8`).

Which rows committed since the last look is decided by commit, not by clock. Each
look runs in one REPEATABLE READ transaction and keeps its snapshot
(`pg_current_snapshot()`); the next look reads the rows it can see that that
snapshot could not (`NOT pg_visible_in_snapshot(xid, last)`): exactly the rows whose
transaction committed in between, however early they were written or stamped. A row
whose transaction was still open at the last look is not visible in its snapshot, so
it is read at the first look after its commit. No clock, no window, no id that could
commit out of order. `xid >= pg_snapshot_xmin(last)` lets the index skip what every
earlier look has seen.

A look closes with 4003, on this gateway, every socket the row ends: one opened
with a token of the ended family; for a user-wide end, one opened with a token issued
before it; a token without `sid` (from before tokens named their family) counts as
belonging to every family of its user that ended after it was issued. Closing is
idempotent (a socket on its way out is not told twice), so the first look after a
start reads every row still kept: a socket whose handshake raced an end committed
just before the first snapshot is still closed.

A look runs every `interval` (the app uses half of TAXI_REVOKE_SECONDS), so a socket
closes within that bound of the commit; handshakes and the HTTP API refuse such
tokens from the commit on, and the dispatcher refuses their commands
(`shared.sessions`). Once a minute a look also deletes the rows that can no longer
refuse anything (older than the longest token lifetime).
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid

from gateway.live import metrics
from gateway.live.connected import ConnectedUsers
from gateway.live.outgoing import Outgoing
from shared.db import DATABASE_OUTAGE, Database
from shared.wire import CloseCode

log = logging.getLogger(__name__)

PRUNE_EVERY_SECONDS = 60

_ENDED_SINCE = """
    SELECT user_id, family, ended_at FROM session_ends
    WHERE $1::text IS NULL
       OR (xid >= pg_snapshot_xmin($1::text::pg_snapshot)
           AND NOT pg_visible_in_snapshot(xid, $1::text::pg_snapshot))
"""


class Revocations:
    def __init__(
        self,
        database: Database,
        users: ConnectedUsers,
        interval_seconds: float,
        keep_seconds: float = 2 * 24 * 60 * 60,
    ) -> None:
        self._database = database
        self._users = users
        self._interval = interval_seconds
        self._keep_seconds = keep_seconds
        # The snapshot of the last look: rows it could not see are still to act on.
        self._snapshot: str | None = None
        self._pruned_at = 0.0

    async def run(self) -> None:
        while True:
            try:
                await self.check()
                await self._prune()
            except DATABASE_OUTAGE as exc:
                log.warning("revocation check paused error=%r", exc)
            await asyncio.sleep(self._interval)

    async def check(self) -> int:
        """Close the sockets of sessions ended since the last check; how many."""
        async with (
            self._database.pool.acquire() as conn,
            conn.transaction(isolation="repeatable_read", readonly=True),
        ):
            # The first statement takes the transaction's snapshot; the next reads with it.
            snapshot: str = await conn.fetchval("SELECT pg_current_snapshot()::text")
            rows = await conn.fetch(_ENDED_SINCE, self._snapshot)
        closed = 0
        for row in rows:
            connected = self._users.get(row["user_id"])
            if connected is None:
                continue
            ended_at = row["ended_at"].timestamp()
            for socket in list(connected.sockets):
                if not socket.closing and ends(socket, row["family"], ended_at):
                    socket.close_after_sending(CloseCode.REVOKED, "session ended: log in again")
                    closed += 1
        # Only once acted on: a look that failed is repeated from the same snapshot.
        self._snapshot = snapshot
        metrics.REVOCATION_CHECKS.inc()
        if closed:
            metrics.SOCKETS_REVOKED.inc(closed)
            log.info("sockets closed for ended sessions count=%d", closed)
        return closed

    async def _prune(self) -> None:
        now = time.monotonic()
        if now - self._pruned_at < PRUNE_EVERY_SECONDS:
            return
        self._pruned_at = now
        await self._database.pool.execute(
            "DELETE FROM session_ends WHERE ended_at < now() - make_interval(secs => $1)",
            float(self._keep_seconds),
        )


def ends(socket: Outgoing, family: uuid.UUID | None, ended_at: float) -> bool:
    """Whether a session end (of `family`, or of all the user's sessions when None, at
    `ended_at`) ends the session `socket` was opened in."""
    if family is None or socket.session is None:
        return socket.issued_at < ended_at
    return socket.session == family
