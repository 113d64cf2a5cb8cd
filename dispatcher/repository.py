"""The dispatcher's SQL. Every function runs on the connection of the caller's transaction."""

from __future__ import annotations

import uuid
from datetime import datetime

from shared.db import Connection
from shared.trip_rows import TRIP_SELECT, trip_from_row
from shared.trips import LIVE_STATUSES, Transition, Trip
from shared.users import USER_COLUMNS, User, user_from_row

_LIVE = sorted(status.value for status in LIVE_STATUSES)


async def mark_processed(conn: Connection, command_id: uuid.UUID) -> bool:
    """Record the command as handled; False if it already was (a redelivery)."""
    inserted = await conn.fetchval(
        "INSERT INTO processed_commands (id) VALUES ($1) ON CONFLICT DO NOTHING RETURNING true",
        command_id,
    )
    return bool(inserted)


async def get_user(conn: Connection, user_id: int) -> User | None:
    row = await conn.fetchrow(f"SELECT {USER_COLUMNS} FROM users WHERE id = $1", user_id)
    return user_from_row(row) if row else None


async def get_trip(conn: Connection, trip_id: uuid.UUID) -> Trip | None:
    row = await conn.fetchrow(f"{TRIP_SELECT} WHERE t.id = $1", trip_id)
    return trip_from_row(row) if row else None


async def live_trip_of(conn: Connection, rider_id: int) -> Trip | None:
    """The rider's trip that has not ended, if any (the schema allows one at most)."""
    row = await conn.fetchrow(
        f"{TRIP_SELECT} WHERE t.rider_id = $1 AND t.status = ANY($2::text[])", rider_id, _LIVE
    )
    return trip_from_row(row) if row else None


async def requested_before(conn: Connection, cutoff: datetime, limit: int) -> list[Trip]:
    """REQUESTED trips created before `cutoff`, oldest first, locked for this transaction.

    SKIP LOCKED lets several workers sweep at once, each taking trips no other holds
    instead of queueing behind one another's locks.
    """
    rows = await conn.fetch(
        f"""
        {TRIP_SELECT}
        WHERE t.status = 'REQUESTED' AND t.created < $1
        ORDER BY t.created, t.id
        LIMIT $2
        FOR UPDATE OF t SKIP LOCKED
        """,
        cutoff,
        limit,
    )
    return [trip_from_row(row) for row in rows]


async def insert_trip(conn: Connection, trip: Trip) -> None:
    """Insert a new trip. A rider's second live trip fails on the unique index
    `trips_one_live_per_rider` (asyncpg.UniqueViolationError) when two requests race."""
    await conn.execute(
        """
        INSERT INTO trips
            (id, created, updated, pick_up_address, drop_off_address, status, rider_id,
             version, cancel_reason, pick_up_lat, pick_up_lng, drop_off_lat, drop_off_lng)
        VALUES ($1, $2, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)
        """,
        trip.id,
        trip.created,
        trip.pick_up_address,
        trip.drop_off_address,
        trip.status.value,
        trip.rider.id,
        trip.version,
        trip.cancel_reason,
        trip.pick_up.lat if trip.pick_up else None,
        trip.pick_up.lng if trip.pick_up else None,
        trip.drop_off.lat if trip.drop_off else None,
        trip.drop_off.lng if trip.drop_off else None,
    )


async def save_transition(conn: Connection, transition: Transition) -> bool:
    """Apply the change only if the trip is still as the transition found it.

    This one conditional statement is what makes racing drivers and workers safe:
    every change bumps the version, so of all the changes decided on one version of
    a trip (accepts by several drivers, the rider's cancel, a timeout) exactly one
    saves. An accept also requires the driver to hold no other active trip; the
    partial unique index `trips_one_active_per_driver` backs that up when one
    driver's two accepts race (the loser's transaction fails with a unique
    violation and is retried).
    """
    before = transition.before
    assert before is not None
    after = transition.after
    driver_id = after.driver.id if after.driver else None
    updated = await conn.fetchval(
        """
            UPDATE trips
            SET status = $2, driver_id = $3, updated = $4, version = $5, cancel_reason = $6
            WHERE id = $1 AND version = $7
              AND ($2 <> 'STARTED' OR NOT EXISTS (
                    SELECT 1 FROM trips busy
                    WHERE busy.driver_id = $3 AND busy.status IN ('STARTED', 'IN_PROGRESS')))
            RETURNING true
            """,
        after.id,
        after.status.value,
        driver_id,
        after.updated,
        after.version,
        after.cancel_reason,
        before.version,
    )
    return bool(updated)
