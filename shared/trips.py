"""Trips and their rules, as pure functions: no I/O, no clock, no await.

    REQUESTED --accept (a driver)--> STARTED --pick up--> IN_PROGRESS --drop off--> COMPLETED
    REQUESTED or STARTED --cancel (the rider)--> CANCELLED, cancel_reason "rider"
    REQUESTED --expire (nobody accepted in time)--> CANCELLED, cancel_reason "no_driver"
    STARTED or IN_PROGRESS --driver lost (gone too long, or deactivated)-->
        CANCELLED, cancel_reason "driver_lost"

A driver accepts only a trip that is on offer to them (with a pick-up point, an offer by
name still open: neither declined nor past its window; without one, every free driver
who has not declined it). A driver may decline an offer instead; a declined or expired
offer is a `Withdrawal`, which leaves the trip as it is (no new version) and the
driver never offered it again. Trips always end: one whose driver vanished is
cancelled, so its rider may request again.

A rider holds one live trip (REQUESTED, STARTED or IN_PROGRESS) at a time. Every
transition adds one to the trip's `version`, so a stale copy is told from a fresh one.

Each transition returns the changed trip and the event that says what happened;
a request that breaks a rule raises `RuleViolation` with a code for the client.
"""

from __future__ import annotations

import dataclasses
import uuid
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

from shared.locations import Point
from shared.users import User
from shared.wire import ErrorCode


class Status(StrEnum):
    REQUESTED = "REQUESTED"
    STARTED = "STARTED"
    IN_PROGRESS = "IN_PROGRESS"
    COMPLETED = "COMPLETED"
    CANCELLED = "CANCELLED"


# Statuses in which a driver is busy with the trip and gets no new offers.
ACTIVE_STATUSES = frozenset({Status.STARTED, Status.IN_PROGRESS})
# Statuses of a rider's one live trip: while they hold one, they request no other.
LIVE_STATUSES = frozenset({Status.REQUESTED, *ACTIVE_STATUSES})
CANCELLABLE_STATUSES = frozenset({Status.REQUESTED, Status.STARTED})
# The assigned driver moves a trip along this path, one step at a time.
DRIVER_STEPS = {Status.STARTED: Status.IN_PROGRESS, Status.IN_PROGRESS: Status.COMPLETED}


class EventType(StrEnum):
    """What happened to a trip; also the `type` of the frame that tells clients."""

    REQUESTED = "trip.requested"
    ACCEPTED = "trip.accepted"
    PICKED_UP = "trip.picked_up"
    COMPLETED = "trip.completed"
    CANCELLED = "trip.cancelled"
    # To the other drivers who were offered the trip: it is no longer up for grabs.
    TAKEN = "trip.taken"


EVENT_FOR_STATUS = {
    Status.REQUESTED: EventType.REQUESTED,
    Status.STARTED: EventType.ACCEPTED,
    Status.IN_PROGRESS: EventType.PICKED_UP,
    Status.COMPLETED: EventType.COMPLETED,
    Status.CANCELLED: EventType.CANCELLED,
}


class CancelReason(StrEnum):
    """Why a trip was cancelled; its `cancel_reason` in the payload."""

    RIDER = "rider"
    NO_DRIVER = "no_driver"
    # The driver of a trip under way was gone too long, or their account was deactivated.
    DRIVER_LOST = "driver_lost"


# The frame that tells one driver their offer of a trip was withdrawn (no `seq`).
WITHDRAWN = "trip.withdrawn"


class WithdrawReason(StrEnum):
    """Why one driver's offer was withdrawn; `reason` in `trip.withdrawn`."""

    DECLINED = "declined"
    # Left unanswered for TAXI_OFFER_SECONDS.
    EXPIRED = "expired"


@dataclass(frozen=True, slots=True)
class TripUnderWay:
    """A trip between accept and drop-off (STARTED or IN_PROGRESS), as its rider's and
    its driver's gateways keep it: the driver is busy, and their locations go to the
    rider."""

    id: str
    rider_id: int
    driver_id: int


class RuleViolation(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True, slots=True)
class Trip:
    id: uuid.UUID
    created: datetime
    updated: datetime
    pick_up_address: str
    drop_off_address: str
    status: Status
    rider: User
    driver: User | None = None
    # 1 when requested, one more for every change since.
    version: int = 1
    # A `CancelReason` value once CANCELLED, otherwise None.
    cancel_reason: str | None = None
    # The rider's points, when their app gave them; a trip with a pick-up point is
    # offered to the nearest drivers first.
    pick_up: Point | None = None
    drop_off: Point | None = None

    def payload(self) -> dict[str, Any]:
        """The course's nested trip, as clients receive it."""
        return {
            "id": str(self.id),
            "created": _iso(self.created),
            "updated": _iso(self.updated),
            "pick_up_address": self.pick_up_address,
            "drop_off_address": self.drop_off_address,
            "pick_up": self.pick_up.payload() if self.pick_up else None,
            "drop_off": self.drop_off.payload() if self.drop_off else None,
            "status": self.status.value,
            "version": self.version,
            "cancel_reason": self.cancel_reason,
            "driver": self.driver.public() if self.driver else None,
            "rider": self.rider.public(),
        }


@dataclass(frozen=True, slots=True)
class Transition:
    """A trip's change: the trip before (None when new), after, and what happened."""

    before: Trip | None
    after: Trip
    event: EventType


@dataclass(frozen=True, slots=True)
class Withdrawal:
    """One driver's offer of an open trip, withdrawn: the trip stays REQUESTED, at its
    version, for everyone else."""

    trip: Trip
    driver_id: int
    reason: WithdrawReason

    def payload(self) -> dict[str, Any]:
        return {"id": str(self.trip.id), "version": self.trip.version, "reason": self.reason}


def request(
    trip_id: uuid.UUID,
    rider: User,
    pick_up_address: str,
    drop_off_address: str,
    now: datetime,
    live_trip: Trip | None = None,
    pick_up: Point | None = None,
    drop_off: Point | None = None,
) -> Transition:
    """`live_trip` is the rider's trip that is not over yet, if they have one."""
    if rider.group != "rider":
        raise RuleViolation(ErrorCode.FORBIDDEN, "only riders request trips")
    if live_trip is not None:
        raise RuleViolation(
            ErrorCode.TRIP_IN_PROGRESS,
            "you already have a trip that has not ended; request another once it is over",
        )
    trip = Trip(
        id=trip_id,
        created=now,
        updated=now,
        pick_up_address=pick_up_address,
        drop_off_address=drop_off_address,
        status=Status.REQUESTED,
        rider=rider,
        pick_up=pick_up,
        drop_off=drop_off,
    )
    return Transition(None, trip, EventType.REQUESTED)


def accept(trip: Trip, driver: User, now: datetime, offered: bool = True) -> Transition:
    """`offered`: whether the trip was offered to this driver (the caller's query)."""
    if driver.group != "driver":
        raise RuleViolation(ErrorCode.FORBIDDEN, "only drivers accept trips")
    if trip.status is not Status.REQUESTED:
        raise RuleViolation(ErrorCode.TRIP_UNAVAILABLE, "this trip is no longer available")
    if not offered:
        # Said as for a trip someone else took: whether it exists is none of their business.
        raise RuleViolation(ErrorCode.TRIP_UNAVAILABLE, "this trip is not on offer to you")
    return _change(trip, Status.STARTED, now, driver=driver)


def decline(trip: Trip, driver: User, offered: bool) -> Withdrawal:
    """`offered`: whether the trip is on offer to this driver now (the caller's query:
    an open offer by name, or a trip without a pick-up point they have not declined)."""
    if driver.group != "driver":
        raise RuleViolation(ErrorCode.FORBIDDEN, "only drivers decline offers")
    if trip.status is not Status.REQUESTED:
        raise RuleViolation(ErrorCode.TRIP_UNAVAILABLE, "this trip is no longer available")
    if not offered:
        raise RuleViolation(ErrorCode.TRIP_UNAVAILABLE, "this trip is not on offer to you")
    return Withdrawal(trip, driver.id, WithdrawReason.DECLINED)


def offer_expired(trip: Trip, driver_id: int) -> Withdrawal:
    """The driver let the offer run past its window. Whether it did is the caller's query."""
    if trip.status is not Status.REQUESTED:
        raise RuleViolation(ErrorCode.TRIP_UNAVAILABLE, "this trip is no longer available")
    return Withdrawal(trip, driver_id, WithdrawReason.EXPIRED)


def advance(trip: Trip, driver: User, status: Status, now: datetime) -> Transition:
    if trip.driver is None or trip.driver.id != driver.id:
        raise RuleViolation(ErrorCode.FORBIDDEN, "only the trip's driver moves it on")
    if DRIVER_STEPS.get(trip.status) is not status:
        raise RuleViolation(
            ErrorCode.INVALID_TRANSITION, f"a {trip.status} trip cannot become {status}"
        )
    return _change(trip, status, now)


def cancel(trip: Trip, rider: User, now: datetime) -> Transition:
    if trip.rider.id != rider.id:
        raise RuleViolation(ErrorCode.FORBIDDEN, "only the trip's rider cancels it")
    if trip.status not in CANCELLABLE_STATUSES:
        raise RuleViolation(
            ErrorCode.INVALID_TRANSITION, f"a {trip.status} trip can no longer be cancelled"
        )
    return _change(trip, Status.CANCELLED, now, cancel_reason=CancelReason.RIDER.value)


def expire(trip: Trip, now: datetime) -> Transition:
    """Nobody accepted the request in time. Whether it is due is the caller's query."""
    if trip.status is not Status.REQUESTED:
        raise RuleViolation(
            ErrorCode.INVALID_TRANSITION, f"a {trip.status} trip is no longer waiting to expire"
        )
    return _change(trip, Status.CANCELLED, now, cancel_reason=CancelReason.NO_DRIVER.value)


def driver_lost(trip: Trip, now: datetime) -> Transition:
    """The trip's driver has been gone too long, or was deactivated: the trip ends so
    that its rider is free to request another. Whether they are lost is the caller's query."""
    if trip.status not in ACTIVE_STATUSES:
        raise RuleViolation(
            ErrorCode.INVALID_TRANSITION, f"a {trip.status} trip has no driver under way to lose"
        )
    return _change(trip, Status.CANCELLED, now, cancel_reason=CancelReason.DRIVER_LOST.value)


def update(
    trip: Trip, user: User, status: Status, now: datetime, offered: bool = True
) -> Transition:
    """An `update.trip` command: the status asked for decides which rule applies.
    `offered`: whether the trip was offered to `user`, for an accept."""
    if status is Status.CANCELLED:
        return cancel(trip, user, now)
    if status is Status.STARTED and trip.status is Status.REQUESTED:
        return accept(trip, user, now, offered)
    lost_the_race = trip.driver is None or trip.driver.id != user.id
    if status is Status.STARTED and user.group == "driver" and lost_the_race:
        raise RuleViolation(ErrorCode.TRIP_UNAVAILABLE, "this trip is no longer available")
    return advance(trip, user, status, now)


def _change(trip: Trip, status: Status, now: datetime, **changes: Any) -> Transition:
    after = dataclasses.replace(
        trip, status=status, updated=now, version=trip.version + 1, **changes
    )
    return Transition(trip, after, EVENT_FOR_STATUS[status])


def _iso(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")
