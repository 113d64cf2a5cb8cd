"""Simulated riders and drivers speaking the public protocol, measuring as they go.

Requests arrive open-loop: the n-th request is sent at start + n/rate whether or
not earlier ones were answered. Every free driver who receives an offer is timed;
the first K of them race to accept it; the winner takes the trip through its
lifecycle. The rider's own notification of the request (`trip.requested`, which
the server stores before sending) is timed too. All times are the load generator's
own monotonic clock, so latencies include both directions of the loopback network
and both event loops.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import gc
import itertools
import math
import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import orjson
import websockets
from websockets.asyncio.client import ClientConnection

from bench.client import SUBPROTOCOLS

PASSWORD = "bench-pAssw0rd"
SIGN_UP_CONCURRENCY = 16
DRAIN_SECONDS = 30


@dataclass
class Trip:
    label: str
    sent_at: float
    idle_at_send: frozenset[int]
    id: str | None = None
    notified_at: float | None = None
    first_offer_at: float | None = None
    offered_to: set[int] = field(default_factory=set)
    racers: int = 0
    first_accept_at: float | None = None
    winners: set[int] = field(default_factory=set)
    assigned_at: float | None = None
    completed_at: float | None = None
    refused: bool = False


@dataclass
class User:
    index: int
    id: int
    token: str
    ws: ClientConnection | None = None
    # A rider's trips not yet completed, oldest first: the server allows one live trip
    # per rider, so a rider with one is passed over while another rider is free.
    live: list[Trip] = field(default_factory=list)


@dataclass
class Observations:
    offer_ms: list[tuple[float, float]] = field(default_factory=list)  # (at, latency)
    notified_ms: list[float] = field(default_factory=list)
    assign_ms: list[float] = field(default_factory=list)
    full_trip_ms: list[float] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)
    lost_races: int = 0
    socket_closes: int = 0


class Load:
    def __init__(self, base_url: str, *, drivers: int, riders: int, racers: int) -> None:
        self.base_url = base_url
        self.run_id = uuid.uuid4().hex[:8]
        self.racers = racers
        self.driver_count = drivers
        self.rider_count = riders
        self.drivers: list[User] = []
        self.riders: list[User] = []
        self.trips: dict[str, Trip] = {}
        self.trips_by_id: dict[str, Trip] = {}
        self.idle: set[int] = set()
        self.left_idle_at: dict[int, list[float]] = {}
        self.seen = Observations()
        self.started_at = time.perf_counter()
        self._readers: list[asyncio.Task[None]] = []
        self._sent = 0
        self._completed = 0
        self._refused = 0
        self._scheduled = False
        self._drained = asyncio.Event()

    # --- setting up ---------------------------------------------------------

    async def prepare(self) -> None:
        await self.sign_up()
        await self.connect()

    async def sign_up(self) -> None:
        """Sign every user up and log them in (their access tokens)."""
        async with httpx.AsyncClient(base_url=self.base_url, timeout=60) as http:
            gate = asyncio.Semaphore(SIGN_UP_CONCURRENCY)
            self.drivers = await asyncio.gather(
                *(self._account(http, gate, "driver", i) for i in range(self.driver_count))
            )
            self.riders = await asyncio.gather(
                *(self._account(http, gate, "rider", i) for i in range(self.rider_count))
            )

    async def connect(self) -> None:
        """One WebSocket per user, each with a task reading it."""
        for user in [*self.drivers, *self.riders]:
            user.ws = await websockets.connect(
                f"{self.base_url.replace('http', 'ws', 1)}/taxi/?token={user.token}",
                max_size=2**20,
                compression=None,
                open_timeout=30,
                subprotocols=SUBPROTOCOLS,
            )
        for driver in self.drivers:
            self.idle.add(driver.index)
            self.left_idle_at[driver.index] = []
            self._readers.append(asyncio.create_task(self._read(driver, self._on_driver_frame)))
        for rider in self.riders:
            self._readers.append(asyncio.create_task(self._read(rider, self._on_rider_frame)))

    async def _account(
        self, http: httpx.AsyncClient, gate: asyncio.Semaphore, group: str, index: int
    ) -> User:
        username = f"bench-{self.run_id}-{group}-{index}@example.com"
        async with gate:
            signed_up = await http.post(
                "/api/sign_up/",
                data={
                    "username": username,
                    "first_name": group.title(),
                    "last_name": str(index),
                    "password1": PASSWORD,
                    "password2": PASSWORD,
                    "group": group,
                },
            )
            signed_up.raise_for_status()
            tokens = await http.post(
                "/api/log_in/", json={"username": username, "password": PASSWORD}
            )
            tokens.raise_for_status()
        return User(index, int(signed_up.json()["id"]), tokens.json()["access"])

    async def close(self) -> None:
        for reader in self._readers:
            reader.cancel()
        for user in [*self.drivers, *self.riders]:
            if user.ws is not None:
                with contextlib.suppress(Exception):
                    await user.ws.close()

    # --- traffic --------------------------------------------------------------

    async def run(self, rate: float, seconds: float, progress: bool = True) -> None:
        """Send `rate` requests per second for `seconds`, open loop, then let them finish.
        Runs may follow one another on the same sockets; what they measure adds up."""
        count = int(rate * seconds)
        self._scheduled = False
        self._drained = asyncio.Event()
        # What exists now (users, sockets) lives for the whole run: keep the collector
        # from walking it again and again, or its pauses show up as latency.
        gc.collect()
        gc.freeze()
        start = time.perf_counter()
        reporter = asyncio.create_task(self._report(start)) if progress else None
        riders = itertools.cycle(self.riders)
        for number in range(count):
            delay = start + number / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            await self._request(self._free_rider(riders), self._sent)
            self._sent += 1
        self._scheduled = True
        self._check_drained()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._drained.wait(), DRAIN_SECONDS)
        if reporter is not None:
            reporter.cancel()

    def _free_rider(self, riders: Iterator[User]) -> User:
        """The next rider in turn without a live trip; the next in turn if none is free
        (the server may then refuse the request with trip_in_progress)."""
        for _ in range(len(self.riders)):
            rider = next(riders)
            if not rider.live:
                return rider
        return next(riders)

    async def _request(self, rider: User, number: int) -> None:
        label = f"bench {self.run_id} {number}"
        trip = Trip(label, time.perf_counter(), frozenset(self.idle))
        self.trips[label] = trip
        rider.live.append(trip)
        await self._send(
            rider,
            {"type": "create.trip", "data": {"pick_up_address": label, "drop_off_address": "B"}},
        )

    async def _send(self, user: User, frame: dict[str, Any]) -> None:
        assert user.ws is not None
        with contextlib.suppress(websockets.ConnectionClosed):
            await user.ws.send(orjson.dumps(frame).decode())

    async def _read(self, user: User, handle: Any) -> None:
        assert user.ws is not None
        try:
            async for raw in user.ws:
                await handle(user, orjson.loads(raw), time.perf_counter())
        except websockets.ConnectionClosed:
            self.seen.socket_closes += 1

    def _trip_of(self, frame: dict[str, Any]) -> Trip | None:
        data = frame.get("data")
        if not isinstance(data, dict):
            return None
        trip = self.trips_by_id.get(data.get("id", ""))
        if trip is None:
            trip = self.trips.get(data.get("pick_up_address", ""))
            if trip is not None and trip.id is None:
                trip.id = data["id"]
                self.trips_by_id[data["id"]] = trip
        return trip

    def _leave_idle(self, driver: int, now: float) -> None:
        self.idle.discard(driver)
        self.left_idle_at[driver].append(now)

    async def _on_driver_frame(self, driver: User, frame: dict[str, Any], now: float) -> None:
        kind = frame.get("type")
        if kind == "error":
            code = frame["data"]["code"]
            if code == "trip_unavailable":
                self.seen.lost_races += 1
            else:
                self.seen.errors[code] += 1
            self.idle.add(driver.index)
            return
        trip = self._trip_of(frame)
        if trip is None or trip.id is None:
            return
        if kind == "trip.requested":
            if driver.index in trip.offered_to:
                return  # a duplicate delivery; the first one was timed
            trip.offered_to.add(driver.index)
            if trip.first_offer_at is None:
                trip.first_offer_at = now
            self.seen.offer_ms.append((now - self.started_at, (now - trip.sent_at) * 1000))
            if driver.index in self.idle and trip.racers < self.racers:
                trip.racers += 1
                trip.first_accept_at = trip.first_accept_at or now
                self._leave_idle(driver.index, now)
                await self._send(driver, _update(trip.id, "STARTED"))
        elif kind == "trip.accepted":
            trip.winners.add(driver.index)
            await self._send(driver, _update(trip.id, "IN_PROGRESS"))
        elif kind == "trip.picked_up":
            await self._send(driver, _update(trip.id, "COMPLETED"))
        elif kind == "trip.completed":
            self.idle.add(driver.index)

    async def _on_rider_frame(self, rider: User, frame: dict[str, Any], now: float) -> None:
        kind = frame.get("type")
        if kind == "error":
            code = frame["data"]["code"]
            self.seen.errors[code] += 1
            if code == "trip_in_progress" and rider.live and rider.live[-1].id is None:
                refused = rider.live.pop()  # the newest request is the one refused
                refused.refused = True
                self._refused += 1
                self._check_drained()
            return
        trip = self._trip_of(frame)
        if trip is None:
            return
        if kind == "trip.requested" and trip.notified_at is None:
            trip.notified_at = now
            self.seen.notified_ms.append((now - trip.sent_at) * 1000)
        elif kind == "trip.accepted" and trip.assigned_at is None and trip.first_accept_at:
            trip.assigned_at = now
            self.seen.assign_ms.append((now - trip.first_accept_at) * 1000)
        elif kind == "trip.completed" and trip.completed_at is None:
            trip.completed_at = now
            self.seen.full_trip_ms.append((now - trip.sent_at) * 1000)
            if trip in rider.live:
                rider.live.remove(trip)
            self._completed += 1
            self._check_drained()

    def _check_drained(self) -> None:
        if self._scheduled and self._completed + self._refused == len(self.trips):
            self._drained.set()

    # --- accounting -------------------------------------------------------

    def expected_offers(self, trip: Trip) -> set[int]:
        """Drivers free from the request until the offer was routed (first receipt)."""
        routed_at = trip.first_offer_at or trip.sent_at
        expected = set()
        for driver in trip.idle_at_send:
            leaves = self.left_idle_at[driver]
            first_leave = bisect.bisect_left(leaves, trip.sent_at)
            if first_leave == len(leaves) or leaves[first_leave] > routed_at:
                expected.add(driver)
        return expected

    async def _report(self, start: float) -> None:
        reported = len(self.seen.offer_ms)
        while True:
            await asyncio.sleep(1)
            recent = sorted(ms for _, ms in self.seen.offer_ms[reported:])
            reported = len(self.seen.offer_ms)
            p99 = f"{recent[max(0, math.ceil(len(recent) * 0.99) - 1)]:.1f}ms" if recent else "-"
            done = self._completed
            print(
                f"[{time.perf_counter() - start:5.1f}s] requested {len(self.trips)}"
                f" offers {len(self.seen.offer_ms)} (last second p99 {p99})"
                f" completed {done} errors {sum(self.seen.errors.values())}",
                file=sys.stderr,
                flush=True,
            )


def _update(trip_id: str, status: str) -> dict[str, Any]:
    return {"type": "update.trip", "data": {"id": trip_id, "status": status}}
