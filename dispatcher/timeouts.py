"""Trips always end. Requests nobody accepted in time end as CANCELLED with
cancel_reason "no_driver"; trips under way whose driver is lost (no gateway has held
an open socket of theirs, and they changed nothing, for the lost-driver time, or their
account was deactivated) end as CANCELLED with cancel_reason "driver_lost".

The deadline is kept by the database, not by a timer in some process: any worker
sweeping now finds every trip that is due, even one requested before every worker
was restarted. Workers sweep concurrently; each takes trips no other holds.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from dispatcher import repository
from shared import trips
from shared.db import Connection
from shared.trips import Transition


async def expire_due(
    conn: Connection, now: datetime, timeout_seconds: int, limit: int = 100
) -> list[Transition]:
    """Cancel up to `limit` requests older than `timeout_seconds`, oldest first, in the
    caller's transaction; return the transitions to notify about once it commits.

    The trips are locked when read and the save is conditional on their version, so
    a trip accepted or cancelled by the rider meanwhile is left as it is.
    """
    cutoff = now - timedelta(seconds=timeout_seconds)
    expired = []
    for trip in await repository.requested_before(conn, cutoff, limit):
        transition = trips.expire(trip, now)
        if await repository.save_transition(conn, transition):
            expired.append(transition)
    return expired


async def end_lost(
    conn: Connection, now: datetime, lost_seconds: int, limit: int = 100
) -> list[Transition]:
    """Cancel up to `limit` trips under way whose driver is lost, in the caller's
    transaction; return the transitions to notify about once it commits.

    When a driver was last seen is kept by the gateways (`gateway.live.presence`: every few
    seconds, the drivers with an open socket there), so this holds whichever gateway or
    worker died. Locked when read, saved only if unchanged since: a drop-off racing the
    sweep wins or loses cleanly."""
    cutoff = now - timedelta(seconds=lost_seconds)
    ended = []
    for trip in await repository.under_way_with_driver_lost(conn, cutoff, limit):
        transition = trips.driver_lost(trip, now)
        if await repository.save_transition(conn, transition):
            ended.append(transition)
    return ended
