"""The dispatcher's SQL. Every function runs on the connection of the caller's transaction."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime

from shared.commands import Command
from shared.db import Connection
from shared.sessions import LIVE_USER
from shared.trip_rows import TRIP_SELECT, trip_from_row
from shared.trips import LIVE_STATUSES, Transition, Trip, Withdrawal
from shared.users import USER_COLUMNS, User, user_from_row

_LIVE = sorted(status.value for status in LIVE_STATUSES)


@dataclass(frozen=True, slots=True)
class Earlier:
    """A command id handled before: whether it asked for the same thing (a retry, or a
    redelivery) or not (its request id reused for a different request), and the error
    frame that refused it, if one did."""

    same_request: bool
    answer: bytes | None = None


@dataclass(frozen=True, slots=True)
class Admission:
    """What a command finds on arrival: whether it was handled before (`earlier`, None
    if it is new) and its sender, if their session is live (None: refused)."""

    earlier: Earlier | None
    sender: User | None


# Recording the command and loading its sender is one statement: every command pays one
# round trip for both. The sender is read with `shared.sessions.LIVE_USER` ($1-$3).
_ADMIT = f"""
WITH recorded AS (
    INSERT INTO processed_commands (id, user_id, fingerprint) VALUES ($4, $1, $5)
    ON CONFLICT DO NOTHING RETURNING true
)
SELECT EXISTS (SELECT FROM recorded) AS new, sender.*
FROM (SELECT) AS one LEFT JOIN ({LIVE_USER}) AS sender ON true
"""


async def admit(conn: Connection, command: Command) -> Admission:
    """Record the command as handled, with who sent it and what it asked for, and load
    its sender if their session is live."""
    row = await conn.fetchrow(
        _ADMIT,
        command.user_id,
        command.issued_at,
        command.session,
        command.id,
        command.fingerprint,
    )
    assert row is not None
    sender = user_from_row(row) if row["id"] is not None else None
    if row["new"]:
        return Admission(None, sender)
    return Admission(await _earlier(conn, command.id, command.fingerprint), sender)


async def _earlier(conn: Connection, command_id: uuid.UUID, fingerprint: bytes) -> Earlier:
    """What was recorded for a command id seen before (read in a statement of its own,
    which sees a racing duplicate that committed after the admitting one began)."""
    row = await conn.fetchrow(
        "SELECT fingerprint, answer FROM processed_commands WHERE id = $1", command_id
    )
    if row is None:  # pruned between the two statements: it was handled, long ago
        return Earlier(same_request=True)
    # Rows from before fingerprints were kept count as the same request.
    same = row["fingerprint"] is None or bytes(row["fingerprint"]) == fingerprint
    answer = row["answer"]
    return Earlier(same, bytes(answer) if answer is not None else None)


async def keep_refusal(
    conn: Connection, command_id: uuid.UUID, user_id: int, answer: bytes, keep: int
) -> None:
    """Keep the error frame that refused the command with its processed row, for a retry
    to get the same answer; of the user's refused commands, only the newest `keep` stay
    remembered, so what one user's refusals make the database keep is bounded."""
    # One of the user's refusals at a time counts what is kept, each seeing the others'
    # (the lock waits for their commit; the next statement's snapshot includes them).
    await conn.execute(
        """
        WITH kept AS (UPDATE processed_commands SET answer = $2 WHERE id = $1)
        SELECT pg_advisory_xact_lock(hashtextextended('refusals:' || $3::bigint, 0))
        """,
        command_id,
        answer,
        user_id,
    )
    await conn.execute(
        """
        DELETE FROM processed_commands WHERE id = ANY(ARRAY(
            SELECT id FROM processed_commands
            WHERE user_id = $1 AND answer IS NOT NULL
            ORDER BY processed DESC
            OFFSET $2))
        """,
        user_id,
        keep,
    )


async def get_user(conn: Connection, user_id: int) -> User | None:
    row = await conn.fetchrow(f"SELECT {USER_COLUMNS} FROM users WHERE id = $1", user_id)
    return user_from_row(row) if row else None


async def get_trip(conn: Connection, trip_id: uuid.UUID) -> Trip | None:
    row = await conn.fetchrow(f"{TRIP_SELECT} WHERE t.id = $1", trip_id)
    return trip_from_row(row) if row else None


async def trips_by_id(conn: Connection, trip_ids: list[uuid.UUID]) -> dict[uuid.UUID, Trip]:
    rows = await conn.fetch(f"{TRIP_SELECT} WHERE t.id = ANY($1::uuid[])", trip_ids)
    return {trip.id: trip for trip in map(trip_from_row, rows)}


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


async def under_way_with_driver_lost(conn: Connection, cutoff: datetime, limit: int) -> list[Trip]:
    """STARTED or IN_PROGRESS trips whose driver is deactivated, or was last seen (a
    gateway holding an open socket of theirs, or their last change of the trip) before
    `cutoff`; oldest change first, locked for this transaction (SKIP LOCKED: workers
    sweeping at once take different trips)."""
    rows = await conn.fetch(
        f"""
        {TRIP_SELECT}
        WHERE t.status IN ('STARTED', 'IN_PROGRESS')
          AND (NOT d.is_active OR GREATEST(d.seen_at, t.updated) < $1)
        ORDER BY t.updated, t.id
        LIMIT $2
        FOR UPDATE OF t SKIP LOCKED
        """,
        cutoff,
        limit,
    )
    return [trip_from_row(row) for row in rows]


@dataclass(frozen=True, slots=True)
class AsOffered:
    """A trip, and whether it is on offer to one driver now."""

    trip: Trip
    on_offer: bool


# Whether the open trip is on offer to driver $2 at $3: a trip with a pick-up point if
# an offer by name to them is open (not declined, not past its window, even if the
# sweep has not withdrawn it yet); one without, to every free driver who has not
# declined it.
#
# An accept that read its offer open an instant before the expiry sweep marked it may
# still win: it came within the window, and the driver then gets the trip's
# `trip.accepted` after its `trip.withdrawn`.
_ON_OFFER = """
CASE WHEN trip.pick_up_lat IS NULL THEN NOT EXISTS (
         SELECT FROM trip_offers o WHERE o.trip_id = trip.id AND o.driver_id = $2)
     ELSE EXISTS (
         SELECT FROM trip_offers o
         WHERE o.trip_id = trip.id AND o.driver_id = $2 AND o.answer IS NULL
           AND (o.expires_at IS NULL OR o.expires_at > $3))
END
"""


async def trip_as_offered(
    conn: Connection, trip_id: uuid.UUID, driver_id: int, now: datetime, *, lock: bool = False
) -> AsOffered | None:
    """The trip and whether it is on offer to the driver now, in one round trip; with
    `lock`, the trip locked for this transaction (what answers an offer locks the trip
    first, as every sweep does, so that they take their locks in one order)."""
    row = await conn.fetchrow(
        f"""
        SELECT trip.*, {_ON_OFFER} AS on_offer
        FROM ({TRIP_SELECT} WHERE t.id = $1{" FOR UPDATE OF t" if lock else ""}) AS trip
        """,
        trip_id,
        driver_id,
        now,
    )
    return AsOffered(trip_from_row(row), row["on_offer"]) if row else None


async def answer_offer(conn: Connection, withdrawal: Withdrawal) -> None:
    """Record the driver's answer to the offer (their offer by name, or, for a trip
    without a pick-up point, a row of its own), so that the trip is never offered to
    them again."""
    await conn.execute(
        """
        INSERT INTO trip_offers (trip_id, driver_id, distance_m, ring, answer)
        VALUES ($1, $2, NULL, 1, $3)
        ON CONFLICT (trip_id, driver_id) DO UPDATE SET answer = EXCLUDED.answer
        """,
        withdrawal.trip.id,
        withdrawal.driver_id,
        withdrawal.reason.value,
    )


async def expire_offers(conn: Connection, now: datetime, limit: int) -> list[tuple[uuid.UUID, int]]:
    """Mark the open offers past their window as expired, for up to `limit` open trips
    (each locked first, SKIP LOCKED: workers sweeping at once take different trips, and
    a trip being accepted or declined is left to the next round); return them."""
    due = await conn.fetch(
        """
        SELECT DISTINCT trip_id FROM trip_offers
        WHERE answer IS NULL AND expires_at <= $1
        LIMIT $2
        """,
        now,
        limit,
    )
    locked = await conn.fetch(
        """
        SELECT id FROM trips WHERE id = ANY($1::uuid[]) AND status = 'REQUESTED'
        ORDER BY id
        FOR UPDATE SKIP LOCKED
        """,
        [row["trip_id"] for row in due],
    )
    rows = await conn.fetch(
        """
        UPDATE trip_offers SET answer = 'expired'
        WHERE trip_id = ANY($1::uuid[]) AND answer IS NULL AND expires_at <= $2
        RETURNING trip_id, driver_id
        """,
        [row["id"] for row in locked],
        now,
    )
    return sorted((row["trip_id"], row["driver_id"]) for row in rows)


async def rings_answered(conn: Connection, trip_ids: list[uuid.UUID]) -> dict[uuid.UUID, float]:
    """The open trips among `trip_ids` whose last ring offered someone and has no open
    offer left (every driver of it declined, or let it expire), with that ring's radius:
    their next ring is due now."""
    rows = await conn.fetch(
        """
        SELECT t.id, t.offer_radius_m FROM trips t
        JOIN LATERAL (
            SELECT bool_and(o.answer IS NOT NULL) AS answered FROM trip_offers o
            WHERE o.trip_id = t.id AND o.distance_m IS NOT NULL AND o.ring = (
                SELECT max(ring) FROM trip_offers l
                WHERE l.trip_id = t.id AND l.distance_m IS NOT NULL)
        ) last_ring ON last_ring.answered
        WHERE t.id = ANY($1::uuid[]) AND t.status = 'REQUESTED' AND t.offer_radius_m IS NOT NULL
        """,
        trip_ids,
    )
    return {row["id"]: row["offer_radius_m"] for row in rows}


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


async def busy_among(conn: Connection, driver_ids: list[int]) -> set[int]:
    """The drivers among `driver_ids` who are on a trip now (not free for offers)."""
    rows = await conn.fetch(
        """
        SELECT driver_id FROM trips
        WHERE driver_id = ANY($1::bigint[]) AND status IN ('STARTED', 'IN_PROGRESS')
        """,
        driver_ids,
    )
    return {row["driver_id"] for row in rows}


async def record_ring(
    conn: Connection,
    trip_id: uuid.UUID,
    ring: int,
    offered: list[tuple[int, float]],
    radius_m: float,
    next_ring_at: datetime | None,
    offers_expire_at: datetime | None = None,
) -> set[int]:
    """Record who of `offered` this ring offers the trip to (those not on a trip now),
    until when, its radius, and when the next is due; return those left out, busy.
    Recording a ring again adds its further drivers."""
    rows = await conn.fetch(
        """
        WITH busy AS (
            SELECT driver_id FROM trips
            WHERE driver_id = ANY($3::bigint[]) AND status IN ('STARTED', 'IN_PROGRESS')
        ), offered AS (
            INSERT INTO trip_offers (trip_id, driver_id, distance_m, ring, expires_at)
            SELECT $1, driver_id, distance_m, $2, $7
            FROM unnest($3::bigint[], $4::double precision[]) AS o(driver_id, distance_m)
            WHERE driver_id NOT IN (SELECT driver_id FROM busy)
        ), widened AS (
            UPDATE trips SET offer_radius_m = $5, widen_at = $6 WHERE id = $1
        )
        SELECT driver_id FROM busy
        """,
        trip_id,
        ring,
        [driver_id for driver_id, _ in offered],
        [distance for _, distance in offered],
        radius_m,
        next_ring_at,
        offers_expire_at,
    )
    return {row["driver_id"] for row in rows}


async def offered(conn: Connection, trip_id: uuid.UUID) -> dict[int, int]:
    """Every driver the open trip was offered to so far (declined, expired or open),
    with the ring that did."""
    rows = await conn.fetch("SELECT driver_id, ring FROM trip_offers WHERE trip_id = $1", trip_id)
    return {row["driver_id"]: row["ring"] for row in rows}


async def offered_many(
    conn: Connection, trip_ids: list[uuid.UUID]
) -> dict[uuid.UUID, dict[int, int]]:
    """`offered` for several trips at once: every trip named, offered to nobody or not."""
    rows = await conn.fetch(
        "SELECT trip_id, driver_id, ring FROM trip_offers WHERE trip_id = ANY($1::uuid[])",
        trip_ids,
    )
    found: dict[uuid.UUID, dict[int, int]] = {trip_id: {} for trip_id in trip_ids}
    for row in rows:
        found[row["trip_id"]][row["driver_id"]] = row["ring"]
    return found


async def holding_offers(conn: Connection, driver_ids: list[int]) -> set[int]:
    """The drivers among `driver_ids` with an offer by name still open."""
    rows = await conn.fetch(
        """
        SELECT DISTINCT driver_id FROM trip_offers
        WHERE driver_id = ANY($1::bigint[]) AND answer IS NULL
        """,
        driver_ids,
    )
    return {row["driver_id"] for row in rows}


async def withdraw_offers(conn: Connection, trip_id: uuid.UUID) -> list[int]:
    """Forget who the trip was offered to, now that it is no longer open; return those
    it was offered to by name, whatever they answered: every driver who was offered a
    trip is told it was taken or cancelled (Part B), also one whose offer was withdrawn.
    A decline of a trip without a pick-up point names no offer: its broadcast tells all."""
    rows = await conn.fetch(
        "DELETE FROM trip_offers WHERE trip_id = $1 RETURNING driver_id, distance_m", trip_id
    )
    return sorted(row["driver_id"] for row in rows if row["distance_m"] is not None)


async def try_match_lock(conn: Connection) -> bool:
    """Whether this transaction now runs the matched policy's round: one worker at a
    time, so that no driver is paired twice in one round. The lock goes with the
    transaction, also when its worker dies, and the next round is anyone's."""
    return bool(
        await conn.fetchval("SELECT pg_try_advisory_xact_lock(hashtextextended('match', 0))")
    )


async def waiting_for_match(conn: Connection, limit: int) -> list[tuple[Trip, float]]:
    """Up to `limit` open requests with a pick-up point and no open offer, oldest first,
    with their radius, locked for this transaction (SKIP LOCKED: one being accepted,
    declined or cancelled right now waits for the next round)."""
    due = await conn.fetch(
        """
        SELECT id, offer_radius_m FROM trips t
        WHERE status = 'REQUESTED' AND pick_up_lat IS NOT NULL AND offer_radius_m IS NOT NULL
          AND NOT EXISTS (
              SELECT 1 FROM trip_offers o WHERE o.trip_id = t.id AND o.answer IS NULL)
        ORDER BY created, id
        LIMIT $1
        FOR UPDATE SKIP LOCKED
        """,
        limit,
    )
    radius = {row["id"]: row["offer_radius_m"] for row in due}
    found = await trips_by_id(conn, list(radius))
    return [(found[row["id"]], radius[row["id"]]) for row in due if row["id"] in found]


async def due_for_widening(conn: Connection, now: datetime, limit: int) -> list[tuple[Trip, float]]:
    """Open requests whose next ring is due, with their last ring's radius, locked for
    this transaction (SKIP LOCKED: workers sweeping at once take different trips)."""
    due = await conn.fetch(
        """
        SELECT id, offer_radius_m FROM trips
        WHERE status = 'REQUESTED' AND widen_at <= $1
        ORDER BY widen_at
        LIMIT $2
        FOR UPDATE SKIP LOCKED
        """,
        now,
        limit,
    )
    radius = {row["id"]: row["offer_radius_m"] for row in due}
    rows = await conn.fetch(f"{TRIP_SELECT} WHERE t.id = ANY($1::uuid[])", list(radius))
    return [(trip, radius[trip.id]) for trip in map(trip_from_row, rows)]
