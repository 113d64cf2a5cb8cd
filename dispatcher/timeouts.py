"""Requests nobody accepted in time end as CANCELLED with cancel_reason "no_driver".

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
