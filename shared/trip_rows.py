"""Reading trips with their rider and driver in one query, for the dispatcher and the API."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime

import asyncpg

from shared.db import Connection
from shared.locations import Point
from shared.trips import Status, Trip
from shared.users import User, user_from_row

TRIP_SELECT = """
SELECT t.id, t.created, t.updated, t.pick_up_address, t.drop_off_address, t.status,
       t.version, t.cancel_reason, t.pick_up_lat, t.pick_up_lng, t.drop_off_lat, t.drop_off_lng,
       r.id AS r_id, r.username AS r_username, r.first_name AS r_first_name,
       r.last_name AS r_last_name, r.user_group AS r_user_group, r.photo AS r_photo,
       r.is_active AS r_is_active,
       d.id AS d_id, d.username AS d_username, d.first_name AS d_first_name,
       d.last_name AS d_last_name, d.user_group AS d_user_group, d.photo AS d_photo,
       d.is_active AS d_is_active
FROM trips t
JOIN users r ON r.id = t.rider_id
LEFT JOIN users d ON d.id = t.driver_id
"""

# What the API reads on: a pooled query or a connection the caller holds.
Reader = asyncpg.Pool | Connection


def trip_from_row(row: asyncpg.Record) -> Trip:
    return Trip(
        id=row["id"],
        created=row["created"],
        updated=row["updated"],
        pick_up_address=row["pick_up_address"],
        drop_off_address=row["drop_off_address"],
        status=Status(row["status"]),
        rider=user_from_row(row, "r_"),
        driver=user_from_row(row, "d_") if row["d_id"] is not None else None,
        version=row["version"],
        cancel_reason=row["cancel_reason"],
        pick_up=_point(row, "pick_up_"),
        drop_off=_point(row, "drop_off_"),
    )


def _point(row: asyncpg.Record, prefix: str) -> Point | None:
    """The point stored in the `<prefix>lat` and `<prefix>lng` columns; the schema
    keeps both or neither."""
    lat, lng = row[f"{prefix}lat"], row[f"{prefix}lng"]
    return None if lat is None or lng is None else Point(lat, lng)


@dataclass(frozen=True, slots=True)
class Position:
    """A trip's place in the newest-first order: a page goes on after it."""

    created: datetime
    id: uuid.UUID

    @classmethod
    def of(cls, trip: Trip) -> Position:
        return cls(trip.created, trip.id)


def _visible_to(user: User) -> str:
    """The WHERE condition of the trips `user` may see; `$1` is their id.

    A rider sees their own trips. A driver sees the trips they drove (any status), and
    the open requests on offer to them, which they may accept: one with a pick-up point
    while their offer by name is open (`trip_offers`: not declined, not past its
    window), one without while they are free (it is offered to every free driver) and
    have not declined it. Nobody else's trip, open or taken.
    """
    if user.group == "rider":
        return "t.rider_id = $1"
    return """(t.driver_id = $1 OR (t.status = 'REQUESTED' AND CASE
        WHEN t.pick_up_lat IS NULL THEN NOT EXISTS (
            SELECT 1 FROM trips busy
            WHERE busy.driver_id = $1 AND busy.status IN ('STARTED', 'IN_PROGRESS'))
            AND NOT EXISTS (
            SELECT 1 FROM trip_offers o WHERE o.trip_id = t.id AND o.driver_id = $1)
        ELSE EXISTS (
            SELECT 1 FROM trip_offers o
            WHERE o.trip_id = t.id AND o.driver_id = $1 AND o.answer IS NULL
              AND (o.expires_at IS NULL OR o.expires_at > now()))
        END))"""


async def visible_trip(reader: Reader, user: User, trip_id: uuid.UUID) -> Trip | None:
    row = await reader.fetchrow(
        f"{TRIP_SELECT} WHERE t.id = $2 AND {_visible_to(user)}", user.id, trip_id
    )
    return trip_from_row(row) if row else None


async def visible_trips(
    reader: Reader,
    user: User,
    *,
    limit: int,
    status: Status | None = None,
    after: Position | None = None,
) -> list[Trip]:
    """Up to `limit` trips `user` may see, newest first (ties by id), after `after`."""
    args: list[object] = [user.id]
    conditions = [_visible_to(user)]
    if status is not None:
        args.append(status.value)
        conditions.append(f"t.status = ${len(args)}")
    if after is not None:
        args.extend((after.created, after.id))
        conditions.append(f"(t.created, t.id) < (${len(args) - 1}, ${len(args)})")
    args.append(limit)
    rows = await reader.fetch(
        f"{TRIP_SELECT} WHERE {' AND '.join(conditions)}"
        f" ORDER BY t.created DESC, t.id DESC LIMIT ${len(args)}",
        *args,
    )
    return [trip_from_row(row) for row in rows]
