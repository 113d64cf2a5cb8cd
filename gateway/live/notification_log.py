"""Reading the notification log the dispatcher writes: where a socket starts, and what
it missed. Every user's notifications are numbered (`seq`) and kept for
TAXI_NOTIFICATION_RETENTION_SECONDS; the dispatcher prunes older ones."""

from __future__ import annotations

from dataclasses import dataclass

from shared.db import Database
from shared.trips import TripUnderWay

# Notifications read back in one round trip while a socket catches up.
READ_BATCH = 500


@dataclass(frozen=True, slots=True)
class ResumePoint:
    """A user's place in their sequence when a socket of theirs opens."""

    last_seq: int  # the newest notification's number (0: none yet)
    delivered_seq: int  # what their sockets had when one last closed
    oldest_seq: int  # the oldest still kept (last_seq + 1 when none is)
    # Their trip between accept and drop-off, if any (a driver on one gets no offers,
    # and their locations go to its rider).
    under_way: TripUnderWay | None


@dataclass(frozen=True, slots=True)
class Logged:
    seq: int
    frame_type: str
    body: bytes


class NotificationLog:
    def __init__(self, database: Database) -> None:
        self._database = database

    async def resume_point(self, user_id: int) -> ResumePoint:
        row = await self._database.pool.fetchrow(
            """
            SELECT u.last_seq, u.delivered_seq,
                   (SELECT min(seq) FROM notifications n WHERE n.user_id = u.id) AS oldest_seq,
                   active.id AS trip_id, active.rider_id, active.driver_id
            FROM users u
            LEFT JOIN LATERAL (
                (SELECT id, rider_id, driver_id FROM trips
                 WHERE driver_id = u.id AND status IN ('STARTED', 'IN_PROGRESS'))
                UNION ALL
                (SELECT id, rider_id, driver_id FROM trips
                 WHERE rider_id = u.id AND status IN ('STARTED', 'IN_PROGRESS'))
                LIMIT 1
            ) active ON true
            WHERE u.id = $1
            """,
            user_id,
        )
        if row is None:
            return ResumePoint(0, 0, 1, under_way=None)
        last_seq = int(row["last_seq"])
        oldest = row["oldest_seq"]
        return ResumePoint(
            last_seq=last_seq,
            delivered_seq=int(row["delivered_seq"]),
            oldest_seq=int(oldest) if oldest is not None else last_seq + 1,
            under_way=(
                TripUnderWay(str(row["trip_id"]), row["rider_id"], row["driver_id"])
                if row["trip_id"] is not None
                else None
            ),
        )

    async def read(self, user_id: int, after: int, upto: int | None = None) -> list[Logged]:
        """The user's notifications numbered after `after` (up to `upto`), in order, at
        most READ_BATCH of them."""
        rows = await self._database.pool.fetch(
            """
            SELECT seq, frame_type, body FROM notifications
            WHERE user_id = $1 AND seq > $2 AND ($3::bigint IS NULL OR seq <= $3)
            ORDER BY seq LIMIT $4
            """,
            user_id,
            after,
            upto,
            READ_BATCH,
        )
        return [Logged(row["seq"], row["frame_type"], bytes(row["body"])) for row in rows]

    async def record_delivered(self, user_id: int, seq: int) -> None:
        """A socket closed having been sent everything up to `seq`: a later socket that
        does not say `since` starts there."""
        await self._database.pool.execute(
            "UPDATE users SET delivered_seq = GREATEST(delivered_seq, $2) WHERE id = $1",
            user_id,
            seq,
        )
