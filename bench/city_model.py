"""The city scenario's population and what the generator keeps of it: the area and the
fleet of drivers moving through it, the trips, and each phase's records (`bench.city`)."""

from __future__ import annotations

import asyncio
import bisect
import math
import os
import random
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np

from bench.stats import percentiles
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
SERVER_PROCESSES = ("gateway", "dispatcher", "rabbitmq", "postgres (this system)")
PHASES = ("quiet", "baseline", "by distance", "broadcast")


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
