"""The city scenario (`make bench SCENARIO=city`): dispatch by distance at city scale,
side by side with the broadcast it replaces.

`--drivers` drivers (default 10,000) move through a 30 x 30 km square around a city
centre at city speeds (random waypoints, 4 to 14 m/s), each reporting where it is
every `--report-seconds` (5), staggered evenly. Riders (`--riders`, default ten
seconds' worth of requests) request trips open-loop at random points of the square.
Every socket is a bare `bench.client.IdleSocket` that hands its messages to this
module, so one process holds them all; the generator reports its own CPU and how
late its event loop ran (a 50 ms tick) beside the figures, so a busy generator
cannot pass for a slow server.

The run, on one driver population, after every driver has reported once:

1. **baseline**: locations only, no trips (`--baseline-seconds`): what the reports
   cost, so the trips' own cost can be told from it.
2. **by distance**: `--rate` trips/s for `--seconds`, each with a `pick_up` point.
3. **broadcast**: the same trips without `pick_up` (offered to every free driver) at
   `--broadcast-rate` (by default what keeps the fan-out near 2,000 offers/s, the
   order of what one gateway held in the saturation scenario: broadcast cannot keep
   up with 100 trips/s to 10,000 drivers) for `--broadcast-seconds`.

Each phase waits until its every trip has an outcome (or `--drain-seconds`). An offer
is taken by the first `--racers` free drivers who see it (the rest are told it was
taken); the winner moves it STARTED -> IN_PROGRESS -> COMPLETED over `--trip-seconds`
(12 by default: two or three reports) and is free again. Drivers report all along,
on a trip too, and the trip's rider receives each of those reports as
`driver.location` (PROTOCOL C3, "Live tracking").

Measured per phase: offer latency (request sent -> first offer of the trip, and the
same for every offer), assign latency (first accept sent -> the rider's
`trip.accepted`, as in `bench.load`), offers per trip in the first ring, double
assignments, lost trips (no outcome), CPU of every process; once, the gateway's RSS
per connection.

The nearest-drivers check: for each first-ring offer (received within half of
TAXI_DISPATCH_WIDEN_SECONDS of the trip's first offer), from the generator's own
record of what every driver reported and when it was free, the driver's rank among
the free drivers with a fresh location at request time. Reports in flight make the
server's picture differ from the generator's by a report or so, so the rank counts
only competitors that are surely nearer (by every position the server may have had
for either driver: the last one sent over `--slack` seconds before the request and
any sent until the offer arrived) and surely free (no change from `--slack` seconds
before the request until the ring's last offer arrived). It must be at most
TAXI_DISPATCH_MAX_OFFERS. Beside it: the strict rank (latest positions only, free at
that instant), and which of its driver's reports each offer's `distance_m` matches:
how much older it was than the driver's latest report before the request, and how
often a newer one had been sent over `--slack` before the request (the dispatcher's
picture lagging that far).

Live tracking, per phase: every `driver.location` a rider receives is matched, by
trip and position, to the report of the trip's driver it carries (the latest one
with that position sent before it arrived). Location-to-rider latency runs from the
generator sending that `update.location` to the rider receiving it, for the reports
sent once the driver had its `trip.accepted`; the one the gateway sends when the
trip is accepted (the driver's position then, reported earlier) is counted apart.
As correctness figures: frames for a trip that is not the rider's, or whose position
is no report of the trip's driver, or that arrive after the rider's `trip.completed`
(or `trip.cancelled`), all of which must be 0; and, for information, the reports
sent while under way (from the driver's `trip.accepted` until it sent COMPLETED)
that never reached the rider.

Also per phase: the whole machine's CPU and any other process busy meanwhile (this
machine is shared), the generator's GC pauses; from the baseline, the CPU one
location report costs each process. A request the gateway answers with
service_unavailable is sent again with the same request_id (backing off).
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import contextlib
import gc
import math
import os
import random
import sys
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import orjson
import psutil

from bench.client import IdleSocket, close_all, open_sockets, raise_open_files_limit
from bench.load import Load
from bench.policies import (
    ACCEPT,
    DECLINE,
    DISPATCH_ROWS,
    Answers,
    Demand,
    dispatch_figures,
    dispatch_rows,
)
from bench.resources import ResourceMonitor, pids_named, rabbitmq_memory_mb, rabbitmq_pids
from bench.revision import Worktree, this_tree_label
from bench.stats import percentiles
from bench.system import LocalSystem
from shared.locations import EARTH_RADIUS_M
from shared.settings import Settings

CENTRE = (52.37, 4.89)
SIDE_M = 30_000.0
SPEED_MPS = (4.0, 14.0)
METRES_PER_DEGREE = EARTH_RADIUS_M * math.pi / 180
# The server's dispatch settings, where the Settings of this tree has none yet.
SERVER_DEFAULTS = {
    "dispatch_max_offers": 8,
    "dispatch_radius_meters": 3000,
    "dispatch_widen_seconds": 15,
    "location_stale_seconds": 30,
}
# The server's and the generator's distances may differ by rounding.
DISTANCE_TOLERANCE_M = 1.0
# Drivers remembered per request for the check: the nearest this many candidates.
CANDIDATES_KEPT = 64
LAG_TICK_SECONDS = 0.05
# A request the gateway could not pass on (service_unavailable) is sent again with the
# same request_id (PROTOCOL C1: it then takes effect at most once), after 1, 2, 4, ...
# seconds, this many times at most.
RETRY_SECONDS = 1.0
RETRIES = 5
UNAVAILABLE = "service_unavailable"
# The broadcast phase's default rate keeps the fan-out near this many offers a second.
BROADCAST_OFFERS_PER_SECOND = 2000
# Files besides the users' sockets (the generator's and the gateway's own).
SPARE_FILES = 200
SETTLE_SECONDS = 3
OFFER_P99_LIMIT_MS = 100
ASSIGN_P99_LIMIT_MS = 100
LOCATION_P99_LIMIT_MS = 100
KB_PER_CONNECTION_LIMIT = 30
TARGET_DRIVERS = 10_000
TARGET_RATE = 100
PHASES = ("baseline", "by distance", "broadcast")


def setting(settings: Settings | None, name: str) -> float:
    """A dispatch setting of the server: from its Settings, else the environment, else
    the protocol's default."""
    value = getattr(settings, name, None) if settings is not None else None
    if value is None:
        raw = os.environ.get(f"TAXI_{name.upper()}", "").strip()
        value = float(raw) if raw else SERVER_DEFAULTS[name]
    return float(value)


def haversine(lat_a: float, lng_a: float, lat_b: float, lng_b: float) -> float:
    """Metres between two points, by the formula of `shared.locations.distance_m`."""
    phi_a, phi_b = math.radians(lat_a), math.radians(lat_b)
    half_chord = (
        math.sin((phi_b - phi_a) / 2) ** 2
        + math.cos(phi_a) * math.cos(phi_b) * math.sin(math.radians(lng_b - lng_a) / 2) ** 2
    )
    return 2 * EARTH_RADIUS_M * math.asin(math.sqrt(min(1.0, half_chord)))


def haversines(lat: float, lng: float, lats: np.ndarray, lngs: np.ndarray) -> np.ndarray:
    """Metres from one point to many (NaN where a position is unknown)."""
    phi = math.radians(lat)
    phis = np.radians(lats)
    half_chord = (
        np.sin((phis - phi) / 2) ** 2
        + math.cos(phi) * np.cos(phis) * np.sin(np.radians(lngs - lng) / 2) ** 2
    )
    result: np.ndarray = 2 * EARTH_RADIUS_M * np.arcsin(np.sqrt(np.minimum(1.0, half_chord)))
    return result


def latency(samples: list[float]) -> dict[str, float | int | None]:
    """`bench.stats.percentiles` with p95 too (nearest rank)."""
    stats = percentiles(samples)
    p95 = None
    if samples:
        ordered = sorted(samples)
        p95 = round(ordered[max(0, math.ceil(0.95 * len(ordered)) - 1)], 2)
    return {
        "count": stats["count"],
        "p50": stats["p50"],
        "p90": stats["p90"],
        "p95": p95,
        "p99": stats["p99"],
        "max": stats["max"],
    }


class Area:
    """The square the drivers move in, in metres east (x) and north (y) of its centre."""

    def __init__(self, centre: tuple[float, float], side_m: float) -> None:
        self.lat, self.lng = centre
        self.half = side_m / 2
        self._lng_metres = METRES_PER_DEGREE * math.cos(math.radians(self.lat))

    def point(self, x: float, y: float) -> tuple[float, float]:
        """WGS84 degrees of (x, y), rounded to 6 places (about 0.1 m), as sent."""
        return (
            round(self.lat + y / METRES_PER_DEGREE, 6),
            round(self.lng + x / self._lng_metres, 6),
        )

    def random_xy(self, rng: random.Random) -> tuple[float, float]:
        return rng.uniform(-self.half, self.half), rng.uniform(-self.half, self.half)


class Fleet:
    """Every driver: where it moves, what it reported and when, and when it was free."""

    def __init__(self, size: int, area: Area, rng: random.Random, now: float) -> None:
        self.size = size
        self.area = area
        self.rng = rng
        # Latest (1) and previous (0) reported position and when it was sent.
        self.lat1 = np.full(size, np.nan)
        self.lng1 = np.full(size, np.nan)
        self.t1 = np.full(size, -np.inf)
        self.lat0 = np.full(size, np.nan)
        self.lng0 = np.full(size, np.nan)
        self.free = np.ones(size, dtype=bool)
        # Every report (send time, position) and every change of free/busy, in order.
        self.times: list[list[float]] = [[] for _ in range(size)]
        self.points: list[list[tuple[float, float]]] = [[] for _ in range(size)]
        self.changes: list[list[float]] = [[] for _ in range(size)]
        # Random waypoints: a leg from (sx, sy) at ts to (tx, ty) at te.
        self._sx = [0.0] * size
        self._sy = [0.0] * size
        self._tx = [0.0] * size
        self._ty = [0.0] * size
        self._ts = [now] * size
        self._te = [now] * size
        self._speed = [0.0] * size
        for i in range(size):
            self._tx[i], self._ty[i] = area.random_xy(rng)
            self._new_leg(i, now)

    def _new_leg(self, i: int, at: float) -> None:
        self._sx[i], self._sy[i] = self._tx[i], self._ty[i]
        self._tx[i], self._ty[i] = self.area.random_xy(self.rng)
        self._speed[i] = self.rng.uniform(*SPEED_MPS)
        length = math.hypot(self._tx[i] - self._sx[i], self._ty[i] - self._sy[i])
        self._ts[i] = at
        self._te[i] = at + max(1.0, length / self._speed[i])

    def where(self, i: int, now: float) -> tuple[float, float, float, float]:
        """Driver i's (lat, lng, heading, speed) now."""
        while now >= self._te[i]:
            self._new_leg(i, self._te[i])
        share = (now - self._ts[i]) / (self._te[i] - self._ts[i])
        dx, dy = self._tx[i] - self._sx[i], self._ty[i] - self._sy[i]
        lat, lng = self.area.point(self._sx[i] + share * dx, self._sy[i] + share * dy)
        heading = round(math.degrees(math.atan2(dx, dy)) % 360.0, 1)
        return lat, lng, heading, round(self._speed[i], 1)

    def reported(self, i: int, lat: float, lng: float, at: float) -> None:
        self.lat0[i], self.lng0[i] = self.lat1[i], self.lng1[i]
        self.lat1[i], self.lng1[i], self.t1[i] = lat, lng, at
        self.times[i].append(at)
        self.points[i].append((lat, lng))

    def set_free(self, i: int, free: bool, at: float) -> None:
        if bool(self.free[i]) != free:
            self.free[i] = free
            self.changes[i].append(at)

    # --- the record, asked afterwards ---------------------------------------------

    def positions(
        self, i: int, request_at: float, until: float, slack: float
    ) -> list[tuple[float, float]]:
        """Every position the dispatcher may have held for driver i when it answered a
        request sent at `request_at` (by `until`): the last report sent over `slack`
        seconds before it, and every later one sent by `until`."""
        times = self.times[i]
        first = max(0, bisect.bisect_right(times, request_at - slack) - 1)
        return self.points[i][first : bisect.bisect_right(times, until)]

    def reports(self, i: int, until: float, count: int) -> list[tuple[float, tuple[float, float]]]:
        """Driver i's last `count` reports sent by `until`: (sent at, position)."""
        end = bisect.bisect_right(self.times[i], until)
        start = max(0, end - count)
        return list(zip(self.times[i][start:end], self.points[i][start:end], strict=True))

    def latest(self, i: int, at: float) -> tuple[float, float] | None:
        """The last position driver i sent by `at`."""
        k = bisect.bisect_right(self.times[i], at)
        return self.points[i][k - 1] if k else None

    def sent_with(self, i: int, point: tuple[float, float], until: float) -> float | None:
        """When driver i sent its last report of exactly `point` by `until`, or None."""
        end = bisect.bisect_right(self.times[i], until)
        for k in range(end - 1, -1, -1):
            if self.points[i][k] == point:
                return self.times[i][k]
        return None

    def sent_between(self, i: int, start: float, end: float) -> list[float]:
        """When driver i sent its reports in [start, end)."""
        times = self.times[i]
        return times[bisect.bisect_left(times, start) : bisect.bisect_left(times, end)]

    def steady(self, i: int, start: float, end: float) -> bool | None:
        """True if driver i was free all through [start, end], False if busy all through,
        None if it changed meanwhile."""
        changes = self.changes[i]
        before = bisect.bisect_left(changes, start)
        if before != bisect.bisect_right(changes, end):
            return None
        return before % 2 == 0  # every driver starts free; changes alternate


class CollectorPauses:
    """The garbage collector's pauses (a `gc.callbacks` entry): (ended at, ms)."""

    def __init__(self) -> None:
        self.pauses: list[tuple[float, float]] = []
        self._started = 0.0

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        now = time.perf_counter()
        if phase == "start":
            self._started = now
        else:
            self.pauses.append((now, (now - self._started) * 1000))

    def between(self, start: float, end: float) -> dict[str, float | int]:
        pauses = [ms for at, ms in self.pauses if start <= at <= end]
        return {
            "count": len(pauses),
            "total_ms": round(sum(pauses), 1),
            "max_ms": round(max(pauses, default=0.0), 1),
        }


class Nearest(NamedTuple):
    """The candidates of one request, from the generator's record at request time."""

    surely: list[int]  # the nearest free drivers with a fresh location, by farthest position
    surely_m: list[float]
    latest: list[int]  # the same by latest position only
    latest_m: list[float]


@dataclass(slots=True, eq=False)
class Sent:
    """A request sent with a request_id, kept so that it can be sent again."""

    trip: CityTrip
    user: int  # a driver's index, or a rider's
    status: str | None  # update.trip's, None for create.trip
    frame: bytes
    attempts: int = 1


@dataclass(slots=True, eq=False)
class CityTrip:
    key: str  # unique in the run: the stem of its requests' ids
    label: str
    phase: str
    rider: int
    sent_at: float
    pick_up: tuple[float, float] | None
    nearest: Nearest | None = None
    id: str | None = None
    notified_at: float | None = None
    first_offer_at: float | None = None
    offers: dict[int, float] = field(default_factory=dict)
    distance_m: dict[int, float] = field(default_factory=dict)
    racers: int = 0
    first_accept_at: float | None = None
    winners: set[int] = field(default_factory=set)
    assigned_at: float | None = None
    outcome: str | None = None
    closed: bool = False
    # Live tracking: when each winner's trip.accepted arrived, when the winner sent
    # COMPLETED, when the rider was told the trip ended.
    driver_accepted_at: dict[int, float] = field(default_factory=dict)
    completed_sent_at: float | None = None
    ended_at: float | None = None


class LiveFrame(NamedTuple):
    """A `driver.location` a rider received: (rider, its trip_id, lat, lng, when)."""

    rider: int
    trip_id: Any
    lat: Any
    lng: Any
    at: float


@dataclass(eq=False)
class Phase:
    name: str
    with_pick_up: bool
    rate: float
    seconds: float
    started_at: float = 0.0
    sending_ended_at: float = 0.0
    ended_at: float = 0.0
    trips: list[CityTrip] = field(default_factory=list)
    first_offer_ms: list[float] = field(default_factory=list)
    offer_ms: list[float] = field(default_factory=list)
    notified_ms: list[float] = field(default_factory=list)
    assign_ms: list[float] = field(default_factory=list)
    full_trip_ms: list[float] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)
    frames: Counter[str] = field(default_factory=Counter)
    live: list[LiveFrame] = field(default_factory=list)
    lost_races: int = 0
    retries: int = 0
    duplicate_offers: int = 0
    skipped_no_free_rider: int = 0
    socket_closes: int = 0
    locations_sent: int = 0
    machine_busy_percent: float | None = None
    # The busiest processes of the machine that are no part of the run.
    others: list[dict[str, Any]] = field(default_factory=list)
    processes: dict[str, Any] = field(default_factory=dict)
    # Trips without an outcome yet; set once there are none and no more will come.
    open_trips: int = 0
    all_ended: asyncio.Event = field(default_factory=asyncio.Event)


class City:
    def __init__(self, args: argparse.Namespace, base_url: str, settings: Settings | None) -> None:
        self.args = args
        self.base_url = base_url
        self.max_offers = int(setting(settings, "dispatch_max_offers"))
        self.radius_m = setting(settings, "dispatch_radius_meters")
        self.widen_seconds = setting(settings, "dispatch_widen_seconds")
        self.stale_seconds = setting(settings, "location_stale_seconds")
        self.slack = args.slack
        self.rng = random.Random(args.seed)
        self.area = Area(CENTRE, SIDE_M)
        # Demand and drivers' answers from the seed alone (bench.policies).
        self.demand = Demand(
            self.area, args.seed, getattr(args, "burst", 1), getattr(args, "burst_radius", 0)
        )
        self.answers = Answers(
            args.seed, getattr(args, "decline_share", 0), getattr(args, "ignore_share", 0)
        )
        self.load = Load(base_url, drivers=args.drivers, riders=args.riders, racers=0)
        self.run_id = self.load.run_id
        self.driver_sockets: list[IdleSocket | None] = []
        self.rider_sockets: list[IdleSocket | None] = []
        self.fleet = Fleet(args.drivers, self.area, self.rng, time.perf_counter())
        self.driver_trip: list[CityTrip | None] = [None] * args.drivers
        self.rider_trip: list[CityTrip | None] = [None] * args.riders
        self.free_riders: deque[int] = deque()
        self.by_label: dict[str, CityTrip] = {}
        self.by_id: dict[str, CityTrip] = {}
        self.sent: dict[str, Sent] = {}
        # Trips of every phase without an outcome yet; set once there are none.
        self.open_trips = 0
        self.all_ended = asyncio.Event()
        self.all_ended.set()
        self.phases: dict[str, Phase] = {}
        self.phase = Phase("set-up", False, 0, 0)
        self.lag: list[tuple[float, float]] = []
        self.collector = CollectorPauses()
        self.reports_started = 0.0
        self.reported_once = asyncio.Event()
        self.closing = False
        self._tasks: list[asyncio.Task[None]] = []
        self._loop = asyncio.get_running_loop()

    # --- setting up ---------------------------------------------------------------

    async def sign_up(self) -> float:
        started = time.perf_counter()
        await self.load.sign_up()
        return time.perf_counter() - started

    async def connect(self) -> tuple[int, int, float]:
        """Every user's socket; (opened, failed, seconds)."""
        drivers, riders = self.load.drivers, self.load.riders
        tokens = [user.token for user in [*drivers, *riders]]

        def make(host: str, path: str, index: int) -> IdleSocket:
            if index < len(drivers):
                return IdleSocket(host, path, partial(self._on_driver, index))
            return IdleSocket(host, path, partial(self._on_rider, index - len(drivers)))

        started = time.perf_counter()
        sockets = await open_sockets(self.base_url, tokens, make)
        elapsed = time.perf_counter() - started
        self.driver_sockets = sockets[: len(drivers)]
        self.rider_sockets = sockets[len(drivers) :]
        for i, driver_socket in enumerate(self.driver_sockets):
            if driver_socket is None:
                self.fleet.set_free(i, False, 0.0)  # never connected: no candidate
        self.free_riders.extend(i for i, s in enumerate(self.rider_sockets) if s is not None)
        for opened in sockets:
            if opened is not None:
                opened.closed.add_done_callback(self._socket_closed)
        failed = sum(1 for s in sockets if s is None)
        return len(sockets) - failed, failed, elapsed

    def _socket_closed(self, _: Any) -> None:
        if not self.closing:
            self.phase.socket_closes += 1

    def start(self) -> None:
        gc.callbacks.append(self.collector)
        self._tasks = [
            asyncio.create_task(self._report_locations()),
            asyncio.create_task(self._watch_lag()),
            asyncio.create_task(self._progress()),
        ]

    async def close(self) -> None:
        self.closing = True
        with contextlib.suppress(ValueError):
            gc.callbacks.remove(self.collector)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await close_all([s for s in [*self.driver_sockets, *self.rider_sockets] if s is not None])

    # --- locations --------------------------------------------------------------

    async def _report_locations(self) -> None:
        """Driver k % N reports at start + k * interval / N: every driver once an
        interval, staggered evenly; late ticks catch up at once (open loop)."""
        connected = [i for i, s in enumerate(self.driver_sockets) if s is not None]
        if not connected:
            return
        step = self.args.report_seconds / len(connected)
        start = self.reports_started = time.perf_counter()
        sent = 0
        while True:
            now = time.perf_counter()
            due = int((now - start) / step) + 1
            while sent < due:
                self._report(connected[sent % len(connected)], now)
                sent += 1
            if sent >= len(connected):
                self.reported_once.set()
            await asyncio.sleep(max(0.005, start + sent * step - time.perf_counter()))

    def _report(self, i: int, now: float) -> None:
        driver_socket = self.driver_sockets[i]
        assert driver_socket is not None
        lat, lng, heading, speed = self.fleet.where(i, now)
        frame = {
            "type": "update.location",
            "data": {"lat": lat, "lng": lng, "heading": heading, "speed_mps": speed},
        }
        if driver_socket.send_text(orjson.dumps(frame)):
            self.fleet.reported(i, lat, lng, now)
            self.phase.locations_sent += 1

    # --- trips --------------------------------------------------------------------

    async def run_phase(
        self,
        name: str,
        with_pick_up: bool,
        rate: float,
        seconds: float,
        watched: dict[str, list[int]],
    ) -> Phase:
        phase = self.phase = self.phases[name] = Phase(name, with_pick_up, rate, seconds)
        print(
            f"{name}: {rate:g} trips/s for {seconds:g}s"
            + (" (with pick_up)" if with_pick_up else " (no pick_up: broadcast)" if rate else ""),
            file=sys.stderr,
            flush=True,
        )
        monitor = ResourceMonitor()
        for process, pids in watched.items():
            monitor.watch(process, pids)
        # What the phases before left lives on: keep the collector from walking it again.
        gc.freeze()
        monitor.start()
        machine_before = psutil.cpu_times()
        others_before = await asyncio.to_thread(_cpu_by_process)
        phase.started_at = time.perf_counter()
        count = int(rate * seconds)
        for number in range(count):
            delay = phase.started_at + self.demand.offset(number, rate) - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            self._request(phase, number)
        if rate <= 0:
            await asyncio.sleep(seconds)
        phase.sending_ended_at = time.perf_counter()
        if phase.open_trips == 0:
            phase.all_ended.set()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(phase.all_ended.wait(), self.args.drain_seconds)
        phase.ended_at = time.perf_counter()
        phase.processes = monitor.stop()
        phase.machine_busy_percent = _busy_percent(machine_before, psutil.cpu_times())
        phase.others = _others(
            others_before,
            await asyncio.to_thread(_cpu_by_process),
            {pid for pids in watched.values() for pid in pids},
            phase.ended_at - phase.started_at,
        )
        return phase

    def _request(self, phase: Phase, number: int) -> None:
        if not self.free_riders:
            phase.skipped_no_free_rider += 1
            return
        rider = self.free_riders.popleft()
        rider_socket = self.rider_sockets[rider]
        assert rider_socket is not None
        label = f"city {self.run_id} {phase.name} {number}"
        key = f"{self.run_id}-{len(self.phases)}-{number}"
        now = time.perf_counter()
        data: dict[str, Any] = {"pick_up_address": label, "drop_off_address": "B"}
        pick_up = None
        if phase.with_pick_up:
            pick_up = self.area.point(*self.demand.pick_up_xy(number))
            data["pick_up"] = {"lat": pick_up[0], "lng": pick_up[1]}
        trip = CityTrip(key, label, phase.name, rider, now, pick_up)
        if pick_up is not None:
            trip.nearest = self._nearest(pick_up, now)
        self.by_label[label] = trip
        phase.trips.append(trip)
        phase.open_trips += 1
        self.open_trips += 1
        self.all_ended.clear()
        self.rider_trip[rider] = trip
        frame = {"type": "create.trip", "request_id": key, "data": data}
        self._send(self.rider_sockets, Sent(trip, rider, None, orjson.dumps(frame)), key)

    def _send(self, sockets: list[IdleSocket | None], sent: Sent, request_id: str) -> None:
        self.sent[request_id] = sent
        user_socket = sockets[sent.user]
        if user_socket is not None:
            user_socket.send_text(sent.frame)

    def _again(self, request_id: str, phase: Phase) -> bool:
        """Send a request the gateway could not pass on again, after a while; False once
        it was sent RETRIES times more."""
        sent = self.sent[request_id]
        if sent.attempts > RETRIES:
            return False
        sent.attempts += 1
        phase.retries += 1
        sockets = self.rider_sockets if sent.status is None else self.driver_sockets
        delay = RETRY_SECONDS * 2 ** (sent.attempts - 2)
        self._loop.call_later(delay, self._send, sockets, sent, request_id)
        return True

    def _nearest(self, pick_up: tuple[float, float], now: float) -> Nearest:
        """The request's candidates: the free drivers with a fresh location, nearest
        first, by the farthest position the dispatcher may hold for each (one in flight
        or the one before), and by the latest one only. Chosen by a flat-earth distance
        (cheap over 10,000 drivers, off by well under 1% across the square), twice as
        many as kept, then ranked by the haversine."""
        fleet = self.fleet
        lat, lng = pick_up
        squeeze = math.cos(math.radians(lat))
        latest = (fleet.lat1 - lat) ** 2 + ((fleet.lng1 - lng) * squeeze) ** 2
        previous = (fleet.lat0 - lat) ** 2 + ((fleet.lng0 - lng) * squeeze) ** 2
        settled = fleet.t1 <= now - self.slack
        with np.errstate(invalid="ignore"):
            farthest = np.where(
                settled, latest, np.where(np.isnan(previous), np.inf, np.fmax(previous, latest))
            )
        fresh = fleet.t1 >= now - self.stale_seconds
        surely_fresh = fleet.t1 >= now - (self.stale_seconds - self.slack)
        chosen = _nearest_of(np.where(fleet.free & surely_fresh, farthest, np.inf))
        surely, surely_m = self._ranked(pick_up, chosen, settled)
        chosen = _nearest_of(np.where(fleet.free & fresh, latest, np.inf))
        by_latest, by_latest_m = self._ranked(pick_up, chosen, None)
        return Nearest(surely, surely_m, by_latest, by_latest_m)

    def _ranked(
        self, pick_up: tuple[float, float], chosen: np.ndarray, settled: np.ndarray | None
    ) -> tuple[list[int], list[float]]:
        """The CANDIDATES_KEPT nearest of `chosen` by the haversine, and their distances:
        to the latest position, or with `settled`, to the farthest the dispatcher may
        hold (the latest once it has surely arrived, else the latest or the one before)."""
        fleet = self.fleet
        metres = haversines(*pick_up, fleet.lat1[chosen], fleet.lng1[chosen])
        if settled is not None:
            before = haversines(*pick_up, fleet.lat0[chosen], fleet.lng0[chosen])
            metres = np.where(settled[chosen], metres, np.fmax(before, metres))
        order = np.argsort(metres, kind="stable")[:CANDIDATES_KEPT]
        return chosen[order].tolist(), metres[order].tolist()

    def _trip_of(self, data: Any) -> CityTrip | None:
        if not isinstance(data, dict):
            return None
        trip = self.by_id.get(data.get("id") or "")
        if trip is None:
            trip = self.by_label.get(data.get("pick_up_address") or "")
            if trip is not None and trip.id is None and isinstance(data.get("id"), str):
                trip.id = data["id"]
                self.by_id[trip.id] = trip
        return trip

    def _send_update(self, driver: int, trip: CityTrip, status: str) -> None:
        if trip.id is not None:
            if status == "COMPLETED" and trip.completed_sent_at is None:
                trip.completed_sent_at = time.perf_counter()
            request_id = f"{trip.key}-{driver}-{status}"
            frame = {
                "type": "update.trip",
                "request_id": request_id,
                "data": {"id": trip.id, "status": status},
            }
            self._send(
                self.driver_sockets, Sent(trip, driver, status, orjson.dumps(frame)), request_id
            )

    def _on_driver(self, driver: int, payload: bytes) -> None:
        now = time.perf_counter()
        frame = orjson.loads(payload)
        kind = frame.get("type")
        data = frame.get("data")
        self.phase.frames[f"driver {kind}"] += 1
        if kind == "error":
            self._driver_error(driver, data, now)
            return
        trip = self._trip_of(data)
        if trip is None:
            return
        phase = self.phases.get(trip.phase, self.phase)
        if kind == "trip.requested":
            self._offered(driver, trip, phase, data, now)
        elif kind in ("trip.taken", "trip.cancelled"):
            trip.closed = True
            if self.driver_trip[driver] is trip:  # their own trip, cancelled
                self.driver_trip[driver] = None
                self.fleet.set_free(driver, True, now)
        elif kind == "trip.accepted":
            trip.winners.add(driver)
            trip.driver_accepted_at.setdefault(driver, now)
            trip.closed = True
            self._loop.call_later(
                self.args.trip_seconds / 2, self._send_update, driver, trip, "IN_PROGRESS"
            )
        elif kind == "trip.withdrawn":
            phase.frames[f"withdrawn {data.get('reason')}"] += 1
        elif kind == "trip.picked_up":
            self._loop.call_later(
                self.args.trip_seconds / 2, self._send_update, driver, trip, "COMPLETED"
            )
        elif kind == "trip.completed" and self.driver_trip[driver] is trip:
            self.driver_trip[driver] = None
            self.fleet.set_free(driver, True, now)

    def _offered(
        self, driver: int, trip: CityTrip, phase: Phase, data: dict[str, Any], now: float
    ) -> None:
        if driver in trip.offers:
            phase.duplicate_offers += 1
            return
        trip.offers[driver] = now
        if isinstance(data.get("distance_m"), int | float):
            trip.distance_m[driver] = float(data["distance_m"])
        phase.offer_ms.append((now - trip.sent_at) * 1000)
        if trip.first_offer_at is None:
            trip.first_offer_at = now
            phase.first_offer_ms.append((now - trip.sent_at) * 1000)
        if trip.closed or trip.racers >= self.args.racers or not self.fleet.free[driver]:
            return
        answer = self.answers.answer(trip, driver)
        if answer != ACCEPT:
            driver_socket = self.driver_sockets[driver]
            if answer == DECLINE and trip.id is not None and driver_socket is not None:
                decline = {"type": "decline.trip", "data": {"id": trip.id}}
                driver_socket.send_text(orjson.dumps(decline))
            return
        trip.racers += 1
        trip.first_accept_at = trip.first_accept_at or now
        self.driver_trip[driver] = trip
        self.fleet.set_free(driver, False, now)
        self._send_update(driver, trip, "STARTED")

    def _driver_error(self, driver: int, data: Any, now: float) -> None:
        data = data if isinstance(data, dict) else {}
        code, request = data.get("code"), data.get("request")
        sent = self.sent.get(data.get("request_id") or "")
        phase = self.phases.get(sent.trip.phase, self.phase) if sent else self.phase
        if code == "trip_unavailable":
            phase.lost_races += 1
        else:
            phase.errors[f"{request}: {code}"] += 1
        if sent is None:
            return
        if code == UNAVAILABLE and self._again(data["request_id"], phase):
            return
        if sent.status == "STARTED" and self.driver_trip[driver] is sent.trip:
            self.driver_trip[driver] = None  # the race was lost: free again
            self.fleet.set_free(driver, True, now)
            # Lost to another driver, or the offer's window had passed: a later offer
            # of the trip (the next ring, round) may be raced for again.
            sent.trip.racers -= 1

    def _on_rider(self, rider: int, payload: bytes) -> None:
        now = time.perf_counter()
        frame = orjson.loads(payload)
        kind = frame.get("type")
        data = frame.get("data")
        self.phase.frames[f"rider {kind}"] += 1
        if kind == "driver.location":
            data = data if isinstance(data, dict) else {}
            trip_id = data.get("trip_id")
            located = self.by_id.get(trip_id) if isinstance(trip_id, str) else None
            phase = self.phases.get(located.phase, self.phase) if located else self.phase
            phase.live.append(LiveFrame(rider, trip_id, data.get("lat"), data.get("lng"), now))
            return
        if kind == "error":
            data = data if isinstance(data, dict) else {}
            code = data.get("code")
            sent = self.sent.get(data.get("request_id") or "")
            phase = self.phases.get(sent.trip.phase, self.phase) if sent else self.phase
            phase.errors[f"{data.get('request')}: {code}"] += 1
            if sent is None or sent.trip.id is not None:
                return
            if code == UNAVAILABLE and self._again(data["request_id"], phase):
                return
            self._ended(sent.trip, f"refused ({code})", now)
            return
        trip = self._trip_of(data)
        if trip is None:
            return
        phase = self.phases.get(trip.phase, self.phase)
        if kind == "trip.requested" and trip.notified_at is None:
            trip.notified_at = now
            phase.notified_ms.append((now - trip.sent_at) * 1000)
        elif kind == "trip.accepted" and trip.assigned_at is None:
            trip.assigned_at = now
            trip.closed = True
            if trip.first_accept_at is not None:
                phase.assign_ms.append((now - trip.first_accept_at) * 1000)
        elif kind == "trip.completed":
            phase.full_trip_ms.append((now - trip.sent_at) * 1000)
            self._ended(trip, "completed", now)
        elif kind == "trip.cancelled":
            reason = data.get("cancel_reason") if isinstance(data, dict) else None
            self._ended(trip, f"cancelled ({reason})", now)

    def _ended(self, trip: CityTrip, outcome: str, now: float) -> None:
        if trip.outcome is not None:
            return
        trip.outcome = outcome
        trip.closed = True
        trip.ended_at = now
        phase = self.phases[trip.phase]
        phase.open_trips -= 1
        if phase.open_trips == 0 and phase.sending_ended_at:
            phase.all_ended.set()
        self.open_trips -= 1
        if self.open_trips == 0:
            self.all_ended.set()
        if self.rider_trip[trip.rider] is trip:
            self.rider_trip[trip.rider] = None
            self.free_riders.append(trip.rider)

    # --- watching the generator -----------------------------------------------

    async def _watch_lag(self) -> None:
        """How late a 50 ms sleep wakes: the generator's event-loop lag."""
        while True:
            expected = time.perf_counter() + LAG_TICK_SECONDS
            await asyncio.sleep(LAG_TICK_SECONDS)
            now = time.perf_counter()
            self.lag.append((now, max(0.0, now - expected) * 1000))

    def lag_between(self, start: float, end: float) -> dict[str, float | int | None]:
        return latency([ms for at, ms in self.lag if start <= at <= end])

    async def _progress(self) -> None:
        while True:
            await asyncio.sleep(1)
            phase = self.phase
            recent = [ms for at, ms in self.lag[-20:]]
            first = sorted(phase.first_offer_ms[-200:])
            p99 = f"{first[max(0, math.ceil(len(first) * 0.99) - 1)]:.1f}ms" if first else "-"
            ended = sum(1 for t in phase.trips if t.outcome is not None)
            print(
                f"[{phase.name}] requested {len(phase.trips)} ended {ended}"
                f" offers {len(phase.offer_ms)} (recent first-offer p99 {p99})"
                f" locations {phase.locations_sent} to riders {len(phase.live)}"
                f" errors {sum(phase.errors.values())} retries {phase.retries}"
                f" loop lag max {max(recent, default=0):.0f}ms",
                file=sys.stderr,
                flush=True,
            )

    # --- the nearest-drivers check --------------------------------------------

    def check(self, phase: Phase) -> dict[str, Any]:
        """Each first-ring offer of the phase's trips against the generator's record."""
        fleet = self.fleet
        checked = violations = strict_violations = offered_busy = unlocated = 0
        beyond_radius = 0
        ranks: Counter[int] = Counter()
        strict_ranks: Counter[int] = Counter()
        mismatch: list[float] = []
        behind_ms: list[float] = []
        unmatched = superseded = 0
        examples: list[dict[str, Any]] = []
        for trip in phase.trips:
            if trip.pick_up is None or trip.nearest is None:
                continue
            ring = self._first_ring(trip)
            if not ring:
                continue
            until = max(ring.values())
            farthest: dict[int, float] = {}

            for driver, at in ring.items():
                checked += 1
                spots = fleet.positions(driver, trip.sent_at, at, self.slack)
                if not spots:
                    unlocated += 1
                    continue
                distances = [haversine(*trip.pick_up, *p) for p in spots]
                near = min(distances)
                if fleet.steady(driver, trip.sent_at - self.slack, at) is False:
                    offered_busy += 1
                reported = trip.distance_m.get(driver)
                if reported is not None:
                    mismatch.append(min(abs(reported - d) for d in distances))
                    used = self._position_used(trip, driver, at, reported)
                    if used is None:
                        unmatched += 1
                    else:
                        latest_sent = fleet.reports(driver, trip.sent_at, 1)
                        if latest_sent:
                            behind_ms.append(max(0.0, latest_sent[0][0] - used) * 1000)
                        newer = fleet.reports(driver, trip.sent_at - self.slack, 1)
                        if newer and newer[0][0] > used:
                            superseded += 1
                if (near if reported is None else reported) > self.radius_m + DISTANCE_TOLERANCE_M:
                    beyond_radius += 1
                rank = 1
                for j, at_request in zip(trip.nearest.surely, trip.nearest.surely_m, strict=True):
                    if at_request >= near - DISTANCE_TOLERANCE_M:
                        # Sorted so; and a report sent later only adds a position, so
                        # the farthest can only grow: no one from here on is nearer.
                        break
                    if j == driver:
                        continue
                    if fleet.steady(j, trip.sent_at - self.slack, until) is not True:
                        continue
                    if self._farthest(trip, j, until, farthest) < near - DISTANCE_TOLERANCE_M:
                        rank += 1
                latest = fleet.latest(driver, trip.sent_at)
                latest_m = haversine(*trip.pick_up, *latest) if latest else math.inf
                strict = 1 + sum(
                    1
                    for j, m in zip(trip.nearest.latest, trip.nearest.latest_m, strict=True)
                    if j != driver and m < latest_m - DISTANCE_TOLERANCE_M
                )
                ranks[min(rank, CANDIDATES_KEPT + 1)] += 1
                strict_ranks[min(strict, CANDIDATES_KEPT + 1)] += 1
                if strict > self.max_offers:
                    strict_violations += 1
                if rank > self.max_offers:
                    violations += 1
                    if len(examples) < 5:
                        examples.append(
                            {
                                "trip": trip.id,
                                "driver_index": driver,
                                "rank": rank,
                                "strict_rank": strict,
                                "distance_m": reported,
                                "generator_distance_m": round(near, 1),
                                "offered_after_ms": round((at - trip.sent_at) * 1000, 1),
                            }
                        )
        return {
            "first_ring_offers_checked": checked,
            "rank_above_max_offers": violations,
            "worst_rank": max(ranks, default=None),
            "ranks": {str(k): v for k, v in sorted(ranks.items())},
            "strict_rank_above_max_offers": strict_violations,
            "worst_strict_rank": max(strict_ranks, default=None),
            "offered_while_surely_busy": offered_busy,
            "offered_without_a_location": unlocated,
            "beyond_radius": beyond_radius,
            "distance_m_mismatch": latency(mismatch),
            "position_used": {
                # How much older than the driver's latest report before the request: 0
                # when the dispatcher was up to date.
                "behind_latest_report_ms": latency(behind_ms),
                "superseded_by_a_report_older_than_slack": superseded,
                "matching_no_recent_report": unmatched,
            },
            "examples": examples,
        }

    def _farthest(
        self, trip: CityTrip, driver: int, until: float, cache: dict[int, float]
    ) -> float:
        """The farthest from the trip's pick-up of the positions the dispatcher may have
        held for `driver` (cached per trip)."""
        if driver not in cache:
            assert trip.pick_up is not None
            spots = self.fleet.positions(driver, trip.sent_at, until, self.slack)
            cache[driver] = max((haversine(*trip.pick_up, *p) for p in spots), default=0.0)
        return cache[driver]

    def _position_used(
        self, trip: CityTrip, driver: int, at: float, reported_m: float
    ) -> float | None:
        """When the report was sent whose distance to the pick-up the offer's
        `distance_m` matches (of the driver's last few by the offer), or None."""
        assert trip.pick_up is not None
        best: tuple[float, float] | None = None
        for sent_at, spot in self.fleet.reports(driver, at, 6):
            error = abs(haversine(*trip.pick_up, *spot) - reported_m)
            if best is None or error <= best[0]:
                best = (error, sent_at)
        if best is None or best[0] > DISTANCE_TOLERANCE_M:
            return None
        return best[1]

    def _first_ring(self, trip: CityTrip) -> dict[int, float]:
        """The offers of the trip's first ring: those that arrived within half the
        widening delay of its first offer (a ring goes out at once, the next one
        TAXI_DISPATCH_WIDEN_SECONDS later), however late that first one came."""
        if trip.first_offer_at is None:
            return {}
        end = trip.first_offer_at + self.widen_seconds / 2
        return {driver: at for driver, at in trip.offers.items() if at < end}

    # --- live tracking ------------------------------------------------------------

    def live_tracking(self, phase: Phase) -> dict[str, Any]:
        """The phase's `driver.location` frames against the generator's record: how
        long each report took to reach the trip's rider, and any that reached a rider
        who is not on the trip, carried no report of the trip's driver, or came after
        the trip ended."""
        fleet = self.fleet
        latency_ms: list[float] = []
        foreign = unmatched = after_end = before_accepted = at_acceptance = duplicates = 0
        delivered: set[tuple[int, float]] = set()
        per_trip: Counter[str] = Counter()
        examples: list[dict[str, Any]] = []
        for frame in phase.live:
            trip = self.by_id.get(frame.trip_id) if isinstance(frame.trip_id, str) else None
            if trip is None or trip.rider != frame.rider:
                foreign += 1
                if len(examples) < 5:
                    examples.append({"why": "not the rider's trip", "trip_id": frame.trip_id})
                continue
            assert trip.id is not None
            per_trip[trip.id] += 1
            if trip.ended_at is not None and frame.at > trip.ended_at:
                after_end += 1
                if len(examples) < 5:
                    examples.append(
                        {
                            "why": "after the trip ended",
                            "trip_id": trip.id,
                            "late_ms": round((frame.at - trip.ended_at) * 1000, 1),
                        }
                    )
            if trip.assigned_at is None or frame.at < trip.assigned_at:
                before_accepted += 1
            match = None
            for driver, accepted_at in trip.driver_accepted_at.items():
                sent_at = fleet.sent_with(driver, (frame.lat, frame.lng), frame.at)
                if sent_at is not None:
                    match = (driver, sent_at, accepted_at)
                    break
            if match is None:
                unmatched += 1
                if len(examples) < 5:
                    examples.append(
                        {
                            "why": "no report of the trip's driver",
                            "trip_id": trip.id,
                            "position": [frame.lat, frame.lng],
                        }
                    )
                continue
            driver, sent_at, accepted_at = match
            if (driver, sent_at) in delivered:
                duplicates += 1
                continue
            delivered.add((driver, sent_at))
            if sent_at < accepted_at:
                at_acceptance += 1  # where the driver was at acceptance, sent earlier
            else:
                latency_ms.append((frame.at - sent_at) * 1000)
        # Reports sent under way (the driver had its trip.accepted and had not sent
        # COMPLETED) by trips that completed: each should have reached the rider.
        expected = missed = 0
        trips_under_way = 0
        for trip in phase.trips:
            if trip.outcome != "completed" or not trip.driver_accepted_at:
                continue
            trips_under_way += 1
            end = trip.completed_sent_at or trip.ended_at or math.inf
            for driver, accepted_at in trip.driver_accepted_at.items():
                for sent_at in fleet.sent_between(driver, accepted_at, end):
                    expected += 1
                    missed += (driver, sent_at) not in delivered
        frames = [per_trip.get(t.id or "", 0) for t in phase.trips if t.driver_accepted_at]
        return {
            "location_to_rider_ms": latency(latency_ms),
            "frames": len(phase.live),
            "at_acceptance": at_acceptance,
            "trips_with_a_driver": trips_under_way,
            "trips_with_frames": sum(1 for n in frames if n),
            "frames_per_trip_mean": round(sum(frames) / len(frames), 2) if frames else None,
            "reports_under_way": expected,
            "reports_under_way_not_delivered": missed,
            "duplicates": duplicates,
            "to_a_rider_not_on_the_trip": foreign,
            "matching_no_report_of_the_trips_driver": unmatched,
            "after_the_trip_ended": after_end,
            "before_the_riders_trip_accepted": before_accepted,
            "wrong": foreign + unmatched + after_end,
            "examples": examples,
        }

    # --- the figures of a phase -----------------------------------------------

    def summary(self, phase: Phase) -> dict[str, Any]:
        trips = phase.trips
        outcomes = Counter(t.outcome or "lost" for t in trips)
        first_ring = [len(self._first_ring(t)) for t in trips if t.offers]
        offered = [len(t.offers) for t in trips]
        elapsed = phase.ended_at - phase.started_at
        result: dict[str, Any] = {
            "with_pick_up": phase.with_pick_up,
            "rate_offered": phase.rate,
            "seconds_sending": round(phase.sending_ended_at - phase.started_at, 1),
            "seconds_in_all": round(elapsed, 1),
            "trips": {
                "requested": len(trips),
                "achieved_rate": round(len(trips) / phase.seconds, 2) if phase.seconds else 0,
                "skipped_no_free_rider": phase.skipped_no_free_rider,
                "outcomes": dict(outcomes),
                "lost": outcomes.get("lost", 0),
                "never_offered": sum(1 for t in trips if not t.offers),
            },
            "latency_ms": {
                "first_offer": latency(phase.first_offer_ms),
                "every_offer": latency(phase.offer_ms),
                "rider_notified": latency(phase.notified_ms),
                "assign": latency(phase.assign_ms),
                "full_trip": latency(phase.full_trip_ms),
            },
            "offers": {
                "delivered": len(phase.offer_ms),
                "per_second": round(len(phase.offer_ms) / elapsed, 1) if elapsed else 0,
                "per_trip_mean": round(sum(offered) / len(offered), 1) if offered else None,
                "first_ring_per_trip_max": max(first_ring, default=None),
                "first_ring_per_trip_mean": round(sum(first_ring) / len(first_ring), 2)
                if first_ring
                else None,
                "trips_over_max_offers_in_first_ring": sum(
                    1 for n in first_ring if n > self.max_offers
                ),
                "duplicates": phase.duplicate_offers,
            },
            "double_assignments": sum(1 for t in trips if len(t.winners) > 1),
            "lost_races": phase.lost_races,
            "retries": phase.retries,
            "error_frames": dict(phase.errors),
            "frames_received": dict(phase.frames),
            "socket_closes": phase.socket_closes,
            "locations_sent": phase.locations_sent,
            "generator_loop_lag_ms": self.lag_between(phase.started_at, phase.ended_at),
            "generator_gc_pauses": self.collector.between(phase.started_at, phase.ended_at),
            "processes": phase.processes,
            "machine_cpu_busy_percent": phase.machine_busy_percent,
            "busiest_other_processes": phase.others,
        }
        result["live_tracking"] = self.live_tracking(phase)
        if phase.with_pick_up:
            result["nearest_check"] = self.check(phase)
            result["dispatch"] = dispatch_figures(self, phase)
        return result


def _cpu_by_process() -> dict[int, tuple[str, float]]:
    """Every process's (short command line, CPU seconds so far)."""
    taken = {}
    for process in psutil.process_iter(["cmdline", "name", "cpu_times"]):
        times = process.info["cpu_times"]
        if times is None:
            continue
        command = " ".join((process.info["cmdline"] or [])[:3]) or process.info["name"] or "?"
        taken[process.pid] = (command[:80], times.user + times.system)
    return taken


def _others(
    before: dict[int, tuple[str, float]],
    after: dict[int, tuple[str, float]],
    watched: set[int],
    seconds: float,
) -> list[dict[str, Any]]:
    """The processes outside the run (nor children of the generator) that used over 5%
    of a CPU between two samples, busiest first: whatever else the machine was doing."""
    me = os.getpid()
    children = {child.pid for child in psutil.Process(me).children(recursive=True)}
    used: list[tuple[float, int, str]] = []
    for pid, (command, cpu) in after.items():
        if pid in watched or pid in children or pid == me:
            continue
        percent = 100 * (cpu - before.get(pid, (command, 0.0))[1]) / max(seconds, 1e-9)
        if percent > 5:
            used.append((round(percent, 1), pid, command))
    return [
        {"pid": pid, "command": command, "cpu_percent": percent}
        for percent, pid, command in sorted(used, reverse=True)[:5]
    ]


def _busy_percent(before: Any, after: Any) -> float | None:
    """The share of all the machine's CPUs' time spent busy between two samples."""
    total = sum(after) - sum(before)
    idle = (after.idle + getattr(after, "iowait", 0.0)) - (
        before.idle + getattr(before, "iowait", 0.0)
    )
    return round(100 * (1 - idle / total), 1) if total > 0 else None


def _nearest_of(values: np.ndarray) -> np.ndarray:
    """Indices of the 2 * CANDIDATES_KEPT smallest finite values, in no order."""
    kept = min(2 * CANDIDATES_KEPT, len(values))
    if kept == 0:
        return np.array([], dtype=np.int64)
    part = np.argpartition(values, kept - 1)[:kept]
    result: np.ndarray = part[np.isfinite(values[part])]
    return result


# --- the run -----------------------------------------------------------------


SERVER_PROCESSES = ("gateway", "dispatcher", "rabbitmq", "postgres (this system)")


async def city(args: argparse.Namespace) -> dict[str, Any]:
    if args.riders is None:
        # Each rider is busy for a trip's length and the wait for a driver.
        args.riders = max(20, int(args.rate * (args.trip_seconds + 10)))
    if args.broadcast_rate is None:
        args.broadcast_rate = round(
            min(args.rate, BROADCAST_OFFERS_PER_SECOND / max(1, args.drivers)), 3
        )
    if args.broadcast_seconds is None:
        args.broadcast_seconds = args.seconds
    if args.drain_seconds is None:
        args.drain_seconds = 30.0
    users = args.drivers + args.riders
    limit = raise_open_files_limit(users + SPARE_FILES)
    if limit < users + SPARE_FILES:
        raise SystemExit(
            f"{users} sockets need an open-files limit above {users + SPARE_FILES}; "
            f"this process has {limit} and may not raise it"
        )
    if args.url:
        return await _run(args, args.url, None, None)
    if args.compare_with:
        return await _compare(args)
    return await _on_local_system(args)


async def _on_local_system(
    args: argparse.Namespace, code: Path | None = None, label: str = "this tree"
) -> dict[str, Any]:
    async with LocalSystem(workers=args.workers, code=code, label=label) as system:
        result = await _run(args, system.base_url, system, system.settings)
    result["setup"]["queues_left_after_clean_up"] = system.queues_left
    return result


async def _compare(args: argparse.Namespace) -> dict[str, Any]:
    """The same city (drivers, demand, seed) on REV, then on this tree, in one run, one
    system at a time (a city is most of what the machine holds): the figures that
    travel between machines are the CPU per trip and per report."""
    with Worktree(args.compare_with) as worktree:
        assert worktree.path is not None
        print(f"city, before ({worktree.label})", file=sys.stderr)
        before = await _on_local_system(args, worktree.path, worktree.label)
        labels = {"before": worktree.label, "after": this_tree_label()}
    print(f"city, after ({labels['after']})", file=sys.stderr)
    after = await _on_local_system(args)
    return {
        "scenario": "city",
        "city_compare": {"labels": labels, "before": before, "after": after},
        "machine": _machine(),
    }


async def _run(
    args: argparse.Namespace, base_url: str, system: LocalSystem | None, settings: Settings | None
) -> dict[str, Any]:
    run = City(args, base_url, settings or _configured())
    gateway = psutil.Process(system.pids()["gateway"][0]) if system else None
    print(f"signing up {args.drivers} drivers and {args.riders} riders", file=sys.stderr)
    signed_up_in = await run.sign_up()
    await asyncio.sleep(SETTLE_SECONDS)
    rss_before = gateway.memory_info().rss if gateway else None
    print(f"  signed up in {signed_up_in:.0f}s; connecting", file=sys.stderr, flush=True)
    try:
        opened, failed, connect_seconds = await run.connect()
        print(
            f"  {opened} sockets open in {connect_seconds:.0f}s ({failed} failed)",
            file=sys.stderr,
            flush=True,
        )
        if not any(run.driver_sockets) or not any(run.rider_sockets):
            where = f" (logs: {system.logs})" if system else ""
            raise SystemExit(f"the gateway opened no driver's or no rider's socket{where}")
        gc.collect()
        gc.freeze()  # what exists now lives for the run: keep the collector off it
        run.start()
        # Every driver reports once before any trip (one without a location would get
        # every trip by broadcast), and the last reports get a second to arrive.
        await asyncio.wait_for(run.reported_once.wait(), args.report_seconds * 3 + 10)
        await asyncio.sleep(1)
        rss_connected = gateway.memory_info().rss if gateway else None
        watched = await _watched(system)
        await run.run_phase("baseline", False, 0, args.baseline_seconds, watched)
        await run.run_phase("by distance", True, args.rate, args.seconds, watched)
        if args.broadcast_seconds > 0:
            await run.run_phase(
                "broadcast", False, args.broadcast_rate, args.broadcast_seconds, watched
            )
        # Trips of an earlier phase may still be going: give them the same time.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(run.all_ended.wait(), args.drain_seconds)
    finally:
        await run.close()
    return _result(
        args, run, signed_up_in, opened, failed, connect_seconds, rss_before, rss_connected
    )


def _configured() -> Settings | None:
    try:
        return Settings.from_env()
    except ValueError:
        return None


async def _watched(system: LocalSystem | None) -> dict[str, list[int]]:
    """The processes to measure (asked off the event loop: rabbitmqctl takes a second)."""
    watched: dict[str, list[int]] = {}
    if system is not None:
        watched.update(system.pids())
    watched["rabbitmq"] = await asyncio.to_thread(rabbitmq_pids)
    if system is not None:
        watched["postgres (this system)"] = await system.database_pids()
    else:  # with --url: every Postgres process of the machine
        watched["postgres (all)"] = await asyncio.to_thread(pids_named, "postgres")
    watched["load generator"] = [os.getpid()]
    return watched


def server_cpu(processes: dict[str, Any]) -> float:
    """CPU seconds of the system under test: gateway, workers, broker, this system's
    Postgres backends (every Postgres process with --url). The broker is shared with
    whatever else uses it."""
    named: tuple[str, ...] = SERVER_PROCESSES
    if "postgres (this system)" not in processes:
        named = (*SERVER_PROCESSES, "postgres (all)")
    return sum(
        float(usage["cpu_seconds"]) for name, usage in processes.items() if name.startswith(named)
    )


def _result(
    args: argparse.Namespace,
    run: City,
    signed_up_in: float,
    opened: int,
    failed: int,
    connect_seconds: float,
    rss_before: int | None,
    rss_connected: int | None,
) -> dict[str, Any]:
    phases = {name: run.summary(run.phases[name]) for name in PHASES if name in run.phases}
    baseline = phases.get("baseline")
    baseline_rate = (
        server_cpu(baseline["processes"]) / baseline["seconds_in_all"]
        if baseline and baseline["seconds_in_all"]
        else 0.0
    )
    for phase in phases.values():
        cpu = server_cpu(phase["processes"])
        trips = phase["trips"]["requested"]
        phase["server_cpu_seconds"] = round(cpu, 2)
        phase["server_cpu_ms_per_trip"] = round(1000 * cpu / trips, 2) if trips else None
        extra = cpu - baseline_rate * phase["seconds_in_all"]
        phase["server_cpu_ms_per_trip_above_baseline"] = (
            round(1000 * extra / trips, 2) if trips else None
        )
    if baseline and baseline["locations_sent"]:
        # Only reports in the baseline: what one costs each process of the server.
        baseline["cpu_us_per_location_report"] = {
            name: round(1e6 * usage["cpu_seconds"] / baseline["locations_sent"])
            for name, usage in baseline["processes"].items()
        }
    peak = max(
        (p["processes"].get("gateway", {}).get("peak_rss_mb", 0) for p in phases.values()),
        default=None,
    )
    memory = {
        "rss_before_mb": _mb(rss_before),
        "rss_connected_mb": _mb(rss_connected),
        "peak_rss_mb": peak or None,
        "kb_per_connection": round((rss_connected - rss_before) / opened / 1024, 1)
        if rss_before is not None and rss_connected is not None and opened
        else None,
    }
    result: dict[str, Any] = {
        "scenario": "city",
        "parameters": {
            "drivers": args.drivers,
            "riders": args.riders,
            "rate": args.rate,
            "seconds": args.seconds,
            "baseline_seconds": args.baseline_seconds,
            "broadcast_rate": args.broadcast_rate,
            "broadcast_seconds": args.broadcast_seconds,
            "report_seconds": args.report_seconds,
            "trip_seconds": args.trip_seconds,
            "racers": args.racers,
            "workers": None if args.url else args.workers,
            "area": {"centre": CENTRE, "side_m": SIDE_M, "speed_mps": SPEED_MPS},
            "server": {
                "dispatch_max_offers": run.max_offers,
                "dispatch_radius_meters": run.radius_m,
                "dispatch_widen_seconds": run.widen_seconds,
                "location_stale_seconds": run.stale_seconds,
            },
            "check": {
                "slack_seconds": args.slack,
                "distance_tolerance_m": DISTANCE_TOLERANCE_M,
            },
            "seed": args.seed,
        },
        "setup": {
            "signed_up_seconds": round(signed_up_in, 1),
            "sockets_opened": opened,
            "sockets_failed": failed,
            "seconds_to_open": round(connect_seconds, 1),
        },
        "gateway_memory": memory,
        "phases": phases,
        "comparison": _comparison(phases),
        "rabbitmq_memory_mb": rabbitmq_memory_mb(),
        "machine": _machine(),
    }
    result["targets"] = _targets(result, run.max_offers)
    return result


def _mb(value: int | None) -> float | None:
    return None if value is None else round(value / 2**20, 1)


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 1) if a is not None and b else None


def _comparison(phases: dict[str, Any]) -> dict[str, Any]:
    """Broadcast over by distance: how many times the CPU per trip and offer p99."""
    near, wide = phases.get("by distance"), phases.get("broadcast")
    if not near or not wide:
        return {}
    return {
        "server_cpu_per_trip": _ratio(
            wide["server_cpu_ms_per_trip"], near["server_cpu_ms_per_trip"]
        ),
        "server_cpu_per_trip_above_baseline": _ratio(
            wide["server_cpu_ms_per_trip_above_baseline"],
            near["server_cpu_ms_per_trip_above_baseline"],
        ),
        "first_offer_p99": _ratio(
            wide["latency_ms"]["first_offer"]["p99"], near["latency_ms"]["first_offer"]["p99"]
        ),
        "every_offer_p99": _ratio(
            wide["latency_ms"]["every_offer"]["p99"], near["latency_ms"]["every_offer"]["p99"]
        ),
        "offers_per_trip": _ratio(wide["offers"]["per_trip_mean"], near["offers"]["per_trip_mean"]),
    }


def _targets(result: dict[str, Any], max_offers: int) -> list[dict[str, Any]]:
    near = result["phases"].get("by distance")
    if not near:
        return []
    check = near.get("nearest_check", {})
    params = result["parameters"]

    def target(name: str, value: Any, limit: str, met: bool | None) -> dict[str, Any]:
        return {"target": name, "value": value, "limit": limit, "met": met}

    def at_most(value: float | None, limit: float) -> bool | None:
        return None if value is None else value <= limit

    first_p99 = near["latency_ms"]["first_offer"]["p99"]
    assign_p99 = near["latency_ms"]["assign"]["p99"]
    live = near["live_tracking"]
    live_p99 = live["location_to_rider_ms"]["p99"]
    ring_max = near["offers"]["first_ring_per_trip_max"]
    kb = result["gateway_memory"]["kb_per_connection"]
    connected = result["setup"]["sockets_opened"] - params["riders"]
    return [
        target(
            "connected drivers",
            connected,
            f">= {TARGET_DRIVERS}",
            connected >= TARGET_DRIVERS,
        ),
        target(
            "trip requests/s achieved",
            near["trips"]["achieved_rate"],
            f">= {TARGET_RATE}",
            near["trips"]["achieved_rate"] >= TARGET_RATE,
        ),
        target(
            "offer p99 (ms, request -> first offer)",
            first_p99,
            f"<= {OFFER_P99_LIMIT_MS}",
            at_most(first_p99, OFFER_P99_LIMIT_MS),
        ),
        target(
            "assign p99 (ms)",
            assign_p99,
            f"<= {ASSIGN_P99_LIMIT_MS}",
            at_most(assign_p99, ASSIGN_P99_LIMIT_MS),
        ),
        target(
            "location -> rider p99 (ms, update.location sent -> driver.location received)",
            live_p99,
            f"<= {LOCATION_P99_LIMIT_MS}",
            at_most(live_p99, LOCATION_P99_LIMIT_MS),
        ),
        target(
            "driver.location to a rider not on the trip, or after it ended",
            live["wrong"],
            "0",
            live["wrong"] == 0,
        ),
        target(
            "offers per trip in the first ring (max)",
            ring_max,
            f"<= {max_offers}",
            at_most(ring_max, max_offers),
        ),
        target(
            "double assignments", near["double_assignments"], "0", near["double_assignments"] == 0
        ),
        target("lost trips", near["trips"]["lost"], "0", near["trips"]["lost"] == 0),
        target(
            f"first-ring offers beyond the {max_offers} nearest free drivers",
            check.get("rank_above_max_offers"),
            "0",
            check.get("rank_above_max_offers") == 0 if check else None,
        ),
        target("gateway KB per connection", kb, f"<= {KB_PER_CONNECTION_LIMIT}", at_most(kb, 30)),
    ]


def _machine() -> dict[str, Any]:
    import platform

    return {
        "cpus": psutil.cpu_count(),
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


# --- the report ----------------------------------------------------------------


def city_compare_markdown(result: dict[str, Any]) -> str:
    """The two runs side by side on the figures that travel, then each in full."""
    compared = result["city_compare"]
    labels = compared["labels"]
    sides = {side: compared[side] for side in ("before", "after")}

    def figure(run: dict[str, Any], *path: str) -> Any:
        value: Any = run
        for key in path:
            value = value.get(key) if isinstance(value, dict) else None
        return "-" if value is None else value

    def per_report(run: dict[str, Any]) -> Any:
        costs = figure(run, "phases", "baseline", "cpu_us_per_location_report")
        if not isinstance(costs, dict):
            return "-"
        server = {k: v for k, v in costs.items() if k != "load generator"}
        return f"{sum(server.values())} ({', '.join(f'{k} {v}' for k, v in server.items())})"

    rows: list[tuple[str, Callable[[dict[str, Any]], Any]]] = [
        (
            "server CPU ms per trip, by distance (above the baseline)",
            lambda r: (
                f"{figure(r, 'phases', 'by distance', 'server_cpu_ms_per_trip')} "
                f"({figure(r, 'phases', 'by distance', 'server_cpu_ms_per_trip_above_baseline')})"
            ),
        ),
        ("server CPU us per location report (baseline)", per_report),
        (
            "offer p99 ms (first offer), by distance",
            lambda r: figure(r, "phases", "by distance", "latency_ms", "first_offer", "p99"),
        ),
        (
            "assign p99 ms, by distance",
            lambda r: figure(r, "phases", "by distance", "latency_ms", "assign", "p99"),
        ),
        ("gateway KB per connection", lambda r: figure(r, "gateway_memory", "kb_per_connection")),
    ]
    lines = [
        "### city, side by side",
        "",
        f"| figure | before ({labels['before']}) | after ({labels['after']}) |",
        "|---|---|---|",
    ]
    for name, cell in rows:
        lines.append(f"| {name} | {cell(sides['before'])} | {cell(sides['after'])} |")
    for side, run in sides.items():
        lines += ["", f"## {side} ({labels[side]})", "", city_markdown(run)]
    return "\n".join(lines) + "\n"


def city_markdown(result: dict[str, Any]) -> str:
    params = result["parameters"]
    server = params["server"]
    setup = result["setup"]
    phases = result["phases"]
    names = list(phases)
    lines = [
        "### city",
        "",
        f"{setup['sockets_opened'] - params['riders']:,} drivers connected "
        f"({setup['sockets_failed']} sockets failed), {params['riders']:,} riders; each "
        f"driver reports every {params['report_seconds']:g} s, moving at "
        f"{params['area']['speed_mps'][0]:g}-{params['area']['speed_mps'][1]:g} m/s through "
        f"{params['area']['side_m'] / 1000:g} x {params['area']['side_m'] / 1000:g} km around "
        f"{params['area']['centre'][0]}, {params['area']['centre'][1]}. "
        f"{params['workers']} worker(s); dispatch: at most {server['dispatch_max_offers']:g} "
        f"offers within {server['dispatch_radius_meters']:g} m, widening every "
        f"{server['dispatch_widen_seconds']:g} s; locations stale after "
        f"{server['location_stale_seconds']:g} s. {params['racers']} racer(s) per trip, "
        f"trips completed over {params['trip_seconds']:g} s.",
        "",
        "| target | value | limit | met |",
        "|---|---|---|---|",
    ]
    for t in result["targets"]:
        met = "-" if t["met"] is None else ("yes" if t["met"] else "**no**")
        lines.append(f"| {t['target']} | {t['value']} | {t['limit']} | {met} |")

    def row(name: str, cell: Callable[[dict[str, Any]], Any]) -> str:
        cells = []
        for phase in names:
            try:
                value = cell(phases[phase])
            except (KeyError, TypeError):
                value = "-"
            cells.append("-" if value is None else str(value))
        return f"| {name} | " + " | ".join(cells) + " |"

    def lat(kind: str, keys: tuple[str, ...] = ("p50", "p95", "p99", "max")) -> Any:
        def cell(p: dict[str, Any]) -> str:
            stats = p["latency_ms"][kind]
            return " / ".join(str(stats[k]) for k in keys) if stats["count"] else "-"

        return cell

    lines += [
        "",
        "| measure | " + " | ".join(names) + " |",
        "|---|" + "---|" * len(names),
        row(
            "trip requests/s offered / achieved",
            lambda p: f"{p['rate_offered']} / {p['trips']['achieved_rate']}",
        ),
        row("trips requested", lambda p: p["trips"]["requested"]),
        row("outcomes", lambda p: _counts(p["trips"]["outcomes"])),
        row("**lost trips** (no outcome by the end)", lambda p: f"**{p['trips']['lost']}**"),
        row("requests skipped (no free rider)", lambda p: p["trips"]["skipped_no_free_rider"]),
        row("**offer ms** (request -> first offer) p50 / p95 / p99 / max", lat("first_offer")),
        row("every offer ms p50 / p95 / p99 / max", lat("every_offer")),
        row("rider notified ms p50 / p95 / p99 / max", lat("rider_notified")),
        row("**assign ms** p50 / p95 / p99 / max", lat("assign")),
        row("full trip ms p50 / p99", lat("full_trip", ("p50", "p99"))),
        row(
            "**location -> rider ms** (update.location sent -> driver.location received) "
            "p50 / p95 / p99 / max (count)",
            _live_latency_cell,
        ),
        row(
            "driver.location frames: in all / at acceptance (position reported before); "
            "trips with a driver / with frames; frames per trip (mean)",
            lambda p: (
                f"{p['live_tracking']['frames']} / {p['live_tracking']['at_acceptance']}; "
                f"{p['live_tracking']['trips_with_a_driver']} / "
                f"{p['live_tracking']['trips_with_frames']}; "
                f"{p['live_tracking']['frames_per_trip_mean']}"
            ),
        ),
        row(
            "reports sent under way / not delivered to the rider; delivered twice",
            lambda p: (
                f"{p['live_tracking']['reports_under_way']} / "
                f"{p['live_tracking']['reports_under_way_not_delivered']}; "
                f"{p['live_tracking']['duplicates']}"
            ),
        ),
        row(
            "**driver.location wrong**: to a rider not on the trip / matching no report of "
            "the trip's driver / after the trip ended (before the rider's trip.accepted)",
            lambda p: (
                f"**{p['live_tracking']['to_a_rider_not_on_the_trip']}** / "
                f"**{p['live_tracking']['matching_no_report_of_the_trips_driver']}** / "
                f"**{p['live_tracking']['after_the_trip_ended']}** "
                f"({p['live_tracking']['before_the_riders_trip_accepted']})"
            ),
        ),
        row("offers per trip (mean)", lambda p: p["offers"]["per_trip_mean"]),
        row(
            "first-ring offers per trip mean / max",
            lambda p: (
                f"{p['offers']['first_ring_per_trip_mean']} / "
                f"{p['offers']['first_ring_per_trip_max']}"
            ),
        ),
        row("offers delivered per second", lambda p: p["offers"]["per_second"]),
        row("**double assignments**", lambda p: f"**{p['double_assignments']}**"),
        row(
            "**nearest check**: first-ring offers checked / rank above max / worst rank",
            lambda p: (
                f"{p['nearest_check']['first_ring_offers_checked']} / "
                f"**{p['nearest_check']['rank_above_max_offers']}** / "
                f"{p['nearest_check']['worst_rank']}"
            ),
        ),
        row(
            "strict rank (latest positions only): above max / worst",
            lambda p: (
                f"{p['nearest_check']['strict_rank_above_max_offers']} / "
                f"{p['nearest_check']['worst_strict_rank']}"
            ),
        ),
        row(
            "offers to surely busy drivers / without a location / beyond the radius",
            lambda p: (
                f"{p['nearest_check']['offered_while_surely_busy']} / "
                f"{p['nearest_check']['offered_without_a_location']} / "
                f"{p['nearest_check']['beyond_radius']}"
            ),
        ),
        row(
            "distance_m vs the generator's, m p99 / max",
            lambda p: (
                f"{p['nearest_check']['distance_m_mismatch']['p99']} / "
                f"{p['nearest_check']['distance_m_mismatch']['max']}"
            ),
        ),
        row(
            "position the offer's distance_m was measured from: older than the latest "
            "report before the request, ms p50 / p99 / max; superseded over the slack "
            "before; matching no recent report",
            _position_used_cell,
        ),
        *(row(name, partial(_dispatch_cell, n)) for n, name in enumerate(DISPATCH_ROWS)),
        row("lost races (trip_unavailable, expected)", lambda p: p["lost_races"]),
        row("requests sent again (service_unavailable)", lambda p: p["retries"]),
        row("error frames", lambda p: _counts(p["error_frames"]) or 0),
        row("socket closes", lambda p: p["socket_closes"]),
        row("locations sent", lambda p: p["locations_sent"]),
        row(
            "**server CPU ms per trip** (above the baseline's rate)",
            lambda p: (
                f"{p['server_cpu_ms_per_trip']} ({p['server_cpu_ms_per_trip_above_baseline']})"
            ),
        ),
        row("server CPU s", lambda p: p["server_cpu_seconds"]),
        row("machine CPU busy % (all cores)", lambda p: p["machine_cpu_busy_percent"]),
        row(
            "other processes over 5% of a CPU meanwhile",
            lambda p: (
                "; ".join(
                    f"{o['command']} {o['cpu_percent']}%" for o in p["busiest_other_processes"]
                )
                or "none"
            ),
        ),
        row(
            "generator GC pauses: count / total ms / max ms",
            lambda p: " / ".join(
                str(p["generator_gc_pauses"][k]) for k in ("count", "total_ms", "max_ms")
            ),
        ),
        row(
            "generator loop lag ms p50 / p99 / max",
            lambda p: " / ".join(str(p["generator_loop_lag_ms"][k]) for k in ("p50", "p99", "max")),
        ),
    ]
    comparison = result.get("comparison") or {}
    if comparison:
        lines += [
            "",
            "Broadcast over by distance (times): "
            f"server CPU per trip {comparison['server_cpu_per_trip']} "
            f"({comparison['server_cpu_per_trip_above_baseline']} above the baseline), "
            f"offer p99 (first offer) {comparison['first_offer_p99']}, "
            f"every offer's p99 {comparison['every_offer_p99']}, "
            f"offers per trip {comparison['offers_per_trip']}.",
        ]
    processes = sorted({name for p in phases.values() for name in p["processes"]})
    lines += [
        "",
        "| process: CPU % (peak RSS MB) | " + " | ".join(names) + " |",
        "|---|" + "---|" * len(names),
    ]
    for process in processes:
        lines.append(row(process, partial(_usage, process)))
    per_report = phases.get("baseline", {}).get("cpu_us_per_location_report")
    if per_report:
        lines += [
            "",
            "CPU per location report, from the baseline (reports only), in microseconds: "
            + ", ".join(f"{name} {us}" for name, us in per_report.items())
            + ".",
        ]
    memory = result["gateway_memory"]
    lines += [
        "",
        f"Gateway RSS {memory['rss_before_mb']} MB before the sockets, "
        f"{memory['rss_connected_mb']} MB with them (after one round of reports), peak "
        f"{memory['peak_rss_mb']} MB: **{memory['kb_per_connection']} KB per connection**. "
        f"Signed up in {setup['signed_up_seconds']} s, sockets opened in "
        f"{setup['seconds_to_open']} s.",
    ]
    return "\n".join(lines) + "\n"


def _dispatch_cell(n: int, phase: dict[str, Any]) -> str:
    return dispatch_rows(phase)[n][1]


def _live_latency_cell(phase: dict[str, Any]) -> str:
    stats = phase["live_tracking"]["location_to_rider_ms"]
    if not stats["count"]:
        return "-"
    return " / ".join(str(stats[k]) for k in ("p50", "p95", "p99", "max")) + f" ({stats['count']})"


def _position_used_cell(phase: dict[str, Any]) -> str:
    used = phase["nearest_check"]["position_used"]
    age = " / ".join(str(used["behind_latest_report_ms"][k]) for k in ("p50", "p99", "max"))
    return (
        f"{age}; {used['superseded_by_a_report_older_than_slack']}; "
        f"{used['matching_no_recent_report']}"
    )


def _usage(process: str, phase: dict[str, Any]) -> str:
    usage = phase["processes"][process]
    return f"{usage['cpu_percent']} ({usage['peak_rss_mb']})"


def _counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{k}: {v}" for k, v in sorted(counts.items()))
