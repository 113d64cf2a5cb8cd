"""One handler per command. Each loads what the rules need, applies a pure transition
and saves it, all on the connection of the worker's transaction.

A handler gets the command's sender as `repository.admit` loaded them (None: not
active, or their session ended). It returns the transition it made (or, for a decline,
the offer it withdrew), or raises `RuleViolation`; the worker turns either into
notifications, stored in the same transaction.
"""

from __future__ import annotations

import uuid
from datetime import datetime

from dispatcher import repository
from shared import trips
from shared.commands import Command, CreateTrip, DeclineTrip, UpdateTrip
from shared.db import Connection
from shared.trips import RuleViolation, Status, Transition, Withdrawal
from shared.users import User
from shared.wire import ErrorCode

# A conditional update that lost a race is retried against the trip as it is now;
# after a couple of rounds the rules themselves say why the command cannot apply.
MAX_CONFLICT_ROUNDS = 3


async def create_trip(
    conn: Connection, command: Command, sender: User | None, now: datetime
) -> Transition:
    assert isinstance(command.data, CreateTrip)
    rider = _live(sender)
    # Two racing requests of one rider both find no live trip here; the unique index
    # `trips_one_live_per_rider` fails the loser's insert, the worker retries the
    # command, and this query then finds the winner's trip.
    live_trip = await repository.live_trip_of(conn, rider.id)
    # A trip id of its own, never derived from the command's: a request id may be used
    # again once its retention is over, and must then make a new trip.
    transition = trips.request(
        uuid.uuid4(),
        rider,
        command.data.pick_up_address,
        command.data.drop_off_address,
        now,
        live_trip=live_trip,
        pick_up=command.data.pick_up,
        drop_off=command.data.drop_off,
    )
    await repository.insert_trip(conn, transition.after)
    return transition


async def update_trip(
    conn: Connection, command: Command, sender: User | None, now: datetime
) -> Transition:
    assert isinstance(command.data, UpdateTrip)
    user = _live(sender)
    for _ in range(MAX_CONFLICT_ROUNDS):
        found = await repository.trip_as_offered(conn, command.data.trip_id, user.id, now)
        if found is None or (user.group == "rider" and found.trip.rider.id != user.id):
            raise RuleViolation(ErrorCode.NOT_FOUND, "no such trip")
        trip = found.trip
        # Whether it is on offer to them matters only to a driver's accept.
        offered = found.on_offer or not (
            command.data.status is Status.STARTED and trip.status is Status.REQUESTED
        )
        transition = trips.update(trip, user, command.data.status, now, offered)
        if await repository.save_transition(conn, transition):
            return transition
        if transition.event is trips.EventType.ACCEPTED:
            fresh = await repository.get_trip(conn, trip.id)
            if fresh is not None and fresh.status is Status.REQUESTED:
                raise RuleViolation(
                    ErrorCode.DRIVER_BUSY, "finish your current trip before accepting another"
                )
    raise RuleViolation(ErrorCode.TRIP_UNAVAILABLE, "the trip changed meanwhile; try again")


async def decline_trip(
    conn: Connection, command: Command, sender: User | None, now: datetime
) -> Withdrawal:
    assert isinstance(command.data, DeclineTrip)
    user = _live(sender)
    # Locked first, as the sweeps lock it: whether this was the last open offer of its
    # ring is then read with every other answer to that ring committed.
    found = await repository.trip_as_offered(conn, command.data.trip_id, user.id, now, lock=True)
    if found is None:
        raise RuleViolation(ErrorCode.NOT_FOUND, "no such trip")
    offered = found.trip.status is Status.REQUESTED and found.on_offer
    withdrawal = trips.decline(found.trip, user, offered)
    await repository.answer_offer(conn, withdrawal)
    return withdrawal


def _live(sender: User | None) -> User:
    """The sender, as `repository.admit` loaded them: None if not active, or if the
    session their command was sent in has ended (PROTOCOL D1: a command sent after the
    end committed is refused, whenever the gateway gets round to closing the socket)."""
    if sender is None:
        raise RuleViolation(
            ErrorCode.FORBIDDEN, "your account is not active, or this session has ended"
        )
    return sender
