"""Who is offered a trip: the nearest free drivers first, in widening rings.

A trip with a pick-up point is offered to at most `max_offers` of the free drivers
with a fresh location within `radius_m` of it, nearest first, each told how far
they are, and to nobody else: a driver whose location is unknown is offered only
trips without a pick-up point, which every free driver hears of by broadcast.
Whenever nobody has accepted for `widen_seconds`, the next ring doubles the radius
and offers the trip to the next nearest. When the trip is taken or cancelled,
everyone who was offered it is told.

Where drivers are comes from this worker's own index (`dispatcher.nearby`, fed by
`dispatcher.driver_locations`). Who is busy, who was offered the trip and when its
next ring is due come from Postgres, in the caller's transaction: any worker can
take the next ring, also one started after every other worker stopped.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timedelta

from dispatcher import repository
from dispatcher.nearby import NearbyDrivers
from dispatcher.notifications import NOBODY, Audience, Broadcast
from shared.db import Connection
from shared.locations import EARTH_RADIUS_M, Point
from shared.settings import Settings
from shared.trips import EventType, Status, Transition, Trip

# Half the earth's circumference: a ring this wide holds every driver there is, so
# no further ring is scheduled.
WHOLE_EARTH_M = math.pi * EARTH_RADIUS_M

Ring = list[tuple[int, float]]


@dataclass(frozen=True, slots=True)
class DispatchPolicy:
    radius_m: float
    max_offers: int
    widen_seconds: float
    stale_seconds: float

    @classmethod
    def from_settings(cls, settings: Settings) -> DispatchPolicy:
        return cls(
            radius_m=settings.dispatch_radius_meters,
            max_offers=settings.dispatch_max_offers,
            widen_seconds=settings.dispatch_widen_seconds,
            stale_seconds=settings.location_stale_seconds,
        )


class Dispatch:
    def __init__(self, drivers: NearbyDrivers, policy: DispatchPolicy) -> None:
        self._drivers = drivers
        self._policy = policy

    async def audience(self, conn: Connection, transition: Transition, now: datetime) -> Audience:
        """Who hears of the change as an offer, or as an offer withdrawn."""
        trip = transition.after
        if transition.event is EventType.REQUESTED:
            if trip.pick_up is None:
                return Audience(broadcast=Broadcast.EVERYONE)
            return Audience(await self._ring(conn, trip, 1, self._policy.radius_m, set(), now))
        if transition.before is not None and transition.before.status is Status.REQUESTED:
            offered = await repository.withdraw_offers(conn, trip.id)
            return Audience(
                [(driver_id, None) for driver_id in offered],
                Broadcast.EVERYONE if trip.pick_up is None else Broadcast.NOBODY,
            )
        return NOBODY

    async def widen_due(
        self, conn: Connection, now: datetime, limit: int
    ) -> list[tuple[Trip, Audience]]:
        """The next ring of up to `limit` requests whose ring is due, in the caller's
        transaction: each trip with the drivers it is now offered to."""
        widened = []
        for trip, radius_m in await repository.due_for_widening(conn, now, limit):
            offered = await repository.offered(conn, trip.id)
            ring = max(offered.values(), default=1) + 1
            chosen = await self._ring(conn, trip, ring, 2 * radius_m, set(offered), now)
            widened.append((trip, Audience(chosen)))
        return widened

    async def _ring(
        self,
        conn: Connection,
        trip: Trip,
        ring: int,
        radius_m: float,
        offered: set[int],
        now: datetime,
    ) -> Ring:
        assert trip.pick_up is not None
        chosen = await self._nearest_free(conn, trip.pick_up, radius_m, offered, now)
        next_ring_at = (
            now + timedelta(seconds=self._policy.widen_seconds)
            if radius_m < WHOLE_EARTH_M
            else None
        )
        await repository.record_ring(conn, trip.id, ring, chosen, radius_m, next_ring_at)
        return chosen

    async def _nearest_free(
        self, conn: Connection, point: Point, radius_m: float, skip: set[int], now: datetime
    ) -> Ring:
        """The nearest drivers within the radius, not in `skip`, who are not on a trip.

        The index may still hold a driver who accepted a trip a moment ago (through
        another worker): Postgres says who is busy, and they leave the index until
        their gateway reports them free again."""
        skip = set(skip)
        while True:
            found = self._drivers.nearest(
                point.lat,
                point.lng,
                radius_m=radius_m,
                limit=self._policy.max_offers,
                now=now.timestamp(),
                stale_seconds=self._policy.stale_seconds,
                exclude=skip,
            )
            if not found:
                return found
            busy = await repository.busy_among(conn, [driver_id for driver_id, _ in found])
            if not busy:
                return found
            skip |= busy
            for driver_id in busy:
                self._drivers.forget(driver_id)
