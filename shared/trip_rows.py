"""Reading trips with their rider and driver in one query, for the dispatcher and the API."""

from __future__ import annotations

import asyncpg

from shared.trips import Status, Trip
from shared.users import user_from_row

TRIP_SELECT = """
SELECT t.id, t.created, t.updated, t.pick_up_address, t.drop_off_address, t.status,
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
    )
