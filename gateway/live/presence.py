"""Telling the workers which drivers are still here, so that trips always end.

Every few seconds the gateway records, in one statement for all of them, that the
drivers with an open socket here are present (`users.seen_at`). A trip under way whose
driver no gateway has recorded, and who has changed nothing, for
TAXI_DRIVER_LOST_SECONDS ends as CANCELLED with cancel_reason "driver_lost"
(`dispatcher.timeouts.end_lost`): a driver who walked away, whose phone died, or whose
gateway was killed no longer holds the rider's trip for ever.

The cost is one UPDATE per gateway per round, of the rows of its drivers: a fifth of
the lost-driver time apart, at most 30 s (every 30 s by default), so a present driver's
mark is never near the cut-off.
"""

from __future__ import annotations

import asyncio
import logging

import asyncpg

from gateway.live.connected import ConnectedUsers
from shared.db import DATABASE_OUTAGE, Database
from shared.settings import Settings

log = logging.getLogger(__name__)

# What costs one round, never the task: the next round tries again.
_SKIPPED: tuple[type[BaseException], ...] = (*DATABASE_OUTAGE, asyncpg.PostgresError)

# The longest and shortest time between two rounds.
MAX_ROUND_SECONDS = 30.0
MIN_ROUND_SECONDS = 0.25


def round_seconds(settings: Settings) -> float:
    """How often the drivers here are marked present: five times within the lost-driver
    time, so a late or failed round or two never makes a present driver look lost."""
    return min(MAX_ROUND_SECONDS, max(MIN_ROUND_SECONDS, settings.driver_lost_seconds / 5))


class Presence:
    def __init__(self, database: Database, users: ConnectedUsers, every_seconds: float) -> None:
        self._database = database
        self._users = users
        self._every_seconds = every_seconds

    async def run(self) -> None:
        """Mark the drivers here present, round after round, until cancelled."""
        while True:
            await self.mark()
            await asyncio.sleep(self._every_seconds)

    async def mark(self) -> None:
        """One round: every driver with an open socket here, in one statement."""
        driver_ids = [driver.user.id for driver in self._users.drivers()]
        if not driver_ids:
            return
        try:
            await self._database.pool.execute(
                "UPDATE users SET seen_at = now() WHERE id = ANY($1::bigint[])", driver_ids
            )
        except _SKIPPED as exc:
            # A driver counts as lost only after several rounds missed.
            log.warning("drivers' presence not recorded count=%d error=%r", len(driver_ids), exc)
