"""Who is offered a trip: the nearest free drivers first, in widening rings, or each
request to the driver an optimal pairing gives it (PROTOCOL C3, D2).

Rings (`TAXI_DISPATCH_POLICY=rings`): a trip with a pick-up point is offered to at
most `max_offers` of the free drivers with a fresh location within `radius_m` of it,
nearest first, each told how far they are, and to nobody else: a driver whose
location is unknown is offered only trips without a pick-up point, which every free
driver hears of by broadcast. Whenever nobody has accepted for `widen_seconds`, the
next ring doubles the radius and offers the trip to the next nearest; at once, when
every driver of the last ring has declined or let their offer expire.

Matched (`TAXI_DISPATCH_POLICY=matched`): a new request waits for the next round.
Every `match_seconds` one worker pairs the requests with no open offer and the free
drivers holding none (`dispatcher.matching`), each within the request's radius and
never one who declined it, and offers each request to its driver alone. A request
left unpaired for `widen_seconds` doubles its radius for the rounds after.

Every offer by name is open for `offer_seconds`; a driver's decline or an expired
offer withdraws it from them alone (`Withdrawal`). When the trip is taken or
cancelled, everyone whose offer was still open is told.

Where drivers are comes from this worker's own index (`dispatcher.nearby`, fed by
`dispatcher.driver_locations`). Who is busy, who was offered the trip and when its
next ring is due come from Postgres, in the caller's transaction: any worker can
take the next ring, also one started after every other worker stopped.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from dispatcher import matching, repository
from dispatcher.nearby import NearbyDrivers
from dispatcher.notifications import NOBODY, Audience, Broadcast
from shared.db import Connection
from shared.locations import EARTH_RADIUS_M
from shared.settings import Settings
from shared.trips import EventType, Status, Transition, Trip, Withdrawal

# Half the earth's circumference: a ring this wide holds every driver there is, so
# no further ring is scheduled.
WHOLE_EARTH_M = math.pi * EARTH_RADIUS_M

Ring = list[tuple[int, float]]
# Drivers a request may be paired with in a round: its nearest this many. Enough that
# requests competing for the same drivers still have others to fall back on; few
# enough that a round over hundreds of requests stays a few milliseconds.
MATCH_CANDIDATES = 16
# Candidates found busy are replaced by the next nearest at most this many times.
BUSY_ROUNDS = 3


@dataclass(frozen=True, slots=True)
class DispatchPolicy:
    radius_m: float
    max_offers: int
    widen_seconds: float
    stale_seconds: float
    offer_seconds: float = 15
    matched: bool = False

    @classmethod
    def from_settings(cls, settings: Settings) -> DispatchPolicy:
        return cls(
            radius_m=settings.dispatch_radius_meters,
            max_offers=settings.dispatch_max_offers,
            widen_seconds=settings.dispatch_widen_seconds,
            stale_seconds=settings.location_stale_seconds,
            offer_seconds=settings.offer_seconds,
            matched=settings.dispatch_policy == "matched",
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
            if self._policy.matched:
                await self._widen_radius(conn, trip, self._policy.radius_m, now)
                return NOBODY
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
            if self._policy.matched:
                # Unpaired for a ring's time: the next rounds look farther.
                await self._widen_radius(conn, trip, 2 * radius_m, now)
                continue
            widened.append(await self._next_ring(conn, trip, radius_m, now))
        return widened

    async def after_withdrawals(
        self, conn: Connection, withdrawals: Sequence[Withdrawal], now: datetime
    ) -> list[tuple[Trip, Audience]]:
        """The next ring of each trip whose last ring has now said no (every driver of it
        declined, or let the offer expire), in the caller's transaction, which holds the
        trips locked. Under the matched policy the next round pairs them again."""
        if self._policy.matched:
            return []
        trips = {w.trip.id: w.trip for w in withdrawals if w.trip.pick_up is not None}
        answered = await repository.rings_answered(conn, list(trips))
        return [
            await self._next_ring(conn, trips[trip_id], radius_m, now)
            for trip_id, radius_m in answered.items()
        ]

    async def match_round(
        self, conn: Connection, now: datetime, limit: int
    ) -> list[tuple[Trip, Audience]]:
        """One round of the matched policy, in the caller's transaction: up to `limit`
        waiting requests paired with free drivers, each with the driver now offered it.
        Nothing when another worker's round is under way (it holds the round's lock
        until its transaction ends, however that ends)."""
        if not await repository.try_match_lock(conn):
            return []
        waiting = await repository.waiting_for_match(conn, limit)
        if not waiting:
            return []
        offered = await repository.offered_many(conn, [trip.id for trip, _ in waiting])
        candidates = await self._candidates(conn, waiting, offered, now)
        trips = {trip.id: (trip, radius_m) for trip, radius_m in waiting}
        paired = []
        for trip_id, driver_id, distance in matching.pair(candidates):
            trip, radius_m = trips[trip_id]
            ring = max(offered[trip_id].values(), default=0) + 1
            busy = await repository.record_ring(
                conn,
                trip_id,
                ring,
                [(driver_id, distance)],
                radius_m,
                self._next_widening(radius_m, now),
                now + timedelta(seconds=self._policy.offer_seconds),
            )
            if busy:  # took a trip since the candidates were read: the next round pairs it
                continue
            paired.append((trip, Audience([(driver_id, distance)])))
        return paired

    async def _candidates(
        self,
        conn: Connection,
        waiting: list[tuple[Trip, float]],
        offered: dict[uuid.UUID, dict[int, int]],
        now: datetime,
    ) -> dict[uuid.UUID, list[tuple[int, float]]]:
        """Each waiting request's nearest free drivers within its radius, none it was
        offered to before (declined, or let expire) and none holding an open offer."""
        unavailable: set[int] = set()
        candidates: dict[uuid.UUID, list[tuple[int, float]]] = {}
        for _ in range(BUSY_ROUNDS):
            for trip, radius_m in waiting:
                assert trip.pick_up is not None
                candidates[trip.id] = self._drivers.nearest(
                    trip.pick_up.lat,
                    trip.pick_up.lng,
                    radius_m=radius_m,
                    limit=MATCH_CANDIDATES,
                    now=now.timestamp(),
                    stale_seconds=self._policy.stale_seconds,
                    exclude=unavailable | set(offered[trip.id]),
                )
            found = sorted({driver for pairs in candidates.values() for driver, _ in pairs})
            busy = await repository.busy_among(conn, found)
            holding = await repository.holding_offers(conn, found)
            if not busy and not holding:
                return candidates
            unavailable |= busy | holding
            for driver_id in busy:
                self._drivers.forget(driver_id)
        return {
            trip_id: [(driver, distance) for driver, distance in pairs if driver not in unavailable]
            for trip_id, pairs in candidates.items()
        }

    async def _next_ring(
        self, conn: Connection, trip: Trip, radius_m: float, now: datetime
    ) -> tuple[Trip, Audience]:
        offered = await repository.offered(conn, trip.id)
        ring = max(offered.values(), default=1) + 1
        chosen = await self._ring(conn, trip, ring, 2 * radius_m, set(offered), now)
        return trip, Audience(chosen)

    async def _widen_radius(
        self, conn: Connection, trip: Trip, radius_m: float, now: datetime
    ) -> None:
        """The matched policy's rings: a radius for the rounds, and when it next doubles."""
        await repository.record_ring(
            conn, trip.id, 1, [], radius_m, self._next_widening(radius_m, now)
        )

    def _next_widening(self, radius_m: float, now: datetime) -> datetime | None:
        if radius_m >= WHOLE_EARTH_M:
            return None
        return now + timedelta(seconds=self._policy.widen_seconds)

    async def _ring(
        self,
        conn: Connection,
        trip: Trip,
        ring: int,
        radius_m: float,
        offered: set[int],
        now: datetime,
    ) -> Ring:
        """Offer the trip to the nearest free drivers within the radius who were not
        offered it before, and record the ring: its radius and when the next is due too.

        The index may still hold a driver who accepted a trip a moment ago (through
        another worker): Postgres says who is busy as the ring is recorded, they leave
        the index until their gateway reports them free again, and the next nearest
        take their places (farther than every driver chosen before them, so the ring
        stays nearest first)."""
        assert trip.pick_up is not None
        skip = set(offered)
        chosen: Ring = []
        while True:
            found = self._drivers.nearest(
                trip.pick_up.lat,
                trip.pick_up.lng,
                radius_m=radius_m,
                limit=self._policy.max_offers - len(chosen),
                now=now.timestamp(),
                stale_seconds=self._policy.stale_seconds,
                exclude=skip,
            )
            busy = await repository.record_ring(
                conn,
                trip.id,
                ring,
                found,
                radius_m,
                self._next_widening(radius_m, now),
                now + timedelta(seconds=self._policy.offer_seconds),
            )
            chosen += [
                (driver_id, distance) for driver_id, distance in found if driver_id not in busy
            ]
            if not busy:
                return chosen
            skip.update(driver_id for driver_id, _ in found)
            for driver_id in busy:
                self._drivers.forget(driver_id)
