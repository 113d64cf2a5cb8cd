"""Free drivers near a point: each worker's in-process index of drivers' last locations.

Fed by every driver's location reports and asked once per new trip (and once per
widening ring) for the nearest drivers within a radius. Pure and synchronous: no I/O,
and the caller passes the time, so a test decides what is fresh. Locations are
ephemeral; a restarted worker's index refills within one reporting interval.

The layout is a grid of cells on the sphere. Rows are bands of latitude `cell_m`
metres tall; each row is cut into the whole number of columns that keeps every cell
at least `cell_m` wide at the row's poleward edge, so cells never shrink towards the
poles and a row's last column meets its first at the antimeridian. A query scans
the cells of ever larger caps around the point, one cell size more each time, and
stops once it holds `limit` drivers no farther than the cap it has covered: the
nearest few cost about the same whether the radius is 3 km or 12 km. Why a grid, and
not h3 cells, Redis GEO or PostGIS: docs/nearby.md (measured by `python -m bench.nearby`).

Each entry remembers the gateway its report came through, and the index when it last
heard from each gateway (every gateway speaks at least once a second). A gateway
that falls silent for `silent_seconds` while others still speak has died, or lost
the broker, and its drivers can be offered nothing: `nearest` passes over its
entries until it speaks again, and `sweep` drops them once they could only be stale.
Silence is measured against the latest word from any gateway, not against the
worker's clock, so a worker that stalled for a while does not take every gateway for
dead when it wakes.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Collection, Iterator
from typing import NamedTuple

from shared.locations import EARTH_RADIUS_M, LATITUDE_RANGE, LONGITUDE_RANGE

# Exactly the factor math.radians multiplies by, so both give the same floats.
_RADIANS_PER_DEGREE = math.pi / 180.0
# Scanned caps reach this much farther than asked, so float rounding at a cap's edge
# can never hide a driver the distance says is inside it.
_CAP_MARGIN_M = 1.0
# Cell keys pack (row, column) into one int, which hashes faster than a tuple.
_ROW_STRIDE = 1 << 32
DEFAULT_CELL_M = 500.0
# TAXI_GATEWAY_SILENT_SECONDS's default (shared.settings): three missed heartbeats.
DEFAULT_SILENT_SECONDS = 3.0
# Probing one cell costs about a third of measuring one driver (bench.nearby).
PROBES_PER_DRIVER = 3.0


class _Fix(NamedTuple):
    """A driver's last report, in the form the distance needs."""

    phi: float  # latitude in radians
    cos_phi: float
    lng: float  # degrees
    at: float
    cell: int
    # The gateway the report came through; None when it did not say.
    gateway: str | None = None


def check_point(lat: float, lng: float) -> None:
    """Refuse what is no WGS84 point (NaN included): it would land in no cell."""
    (south, north), (west, east) = LATITUDE_RANGE, LONGITUDE_RANGE
    if not (south <= lat <= north and west <= lng <= east):
        raise ValueError(f"not a point: lat={lat!r} lng={lng!r}")


class NearbyDrivers:
    """Drivers' last known locations, asked for the nearest fresh ones to a point.

    `update` costs a few microseconds and `nearest` (8 of 10,000 drivers) tens of
    them: numbers in docs/nearby.md. Whoever owns the index calls `sweep` now and
    then, so drivers who stopped reporting do not stay in memory.
    """

    def __init__(
        self,
        cell_m: float = DEFAULT_CELL_M,
        probes_per_driver: float = PROBES_PER_DRIVER,
        silent_seconds: float = DEFAULT_SILENT_SECONDS,
    ) -> None:
        if not cell_m > 0:
            raise ValueError(f"cell_m must be positive, got {cell_m!r}")
        self._cell_m = cell_m
        self._silent_seconds = silent_seconds
        # When each gateway last spoke (the caller's clock), the latest of those, and
        # the gateways silent for `silent_seconds` before it: reworked on each word
        # heard (a few gateways), so a query only looks an entry's gateway up.
        self._heard: dict[str, float] = {}
        self._latest = -math.inf
        self._silent: frozenset[str] = frozenset()
        self._probes_per_driver = probes_per_driver
        self._row_deg = cell_m / (EARTH_RADIUS_M * _RADIANS_PER_DEGREE)
        self._rows = math.ceil(180.0 / self._row_deg)
        self._columns_by_row: dict[int, int] = {}
        self._fixes: dict[int, _Fix] = {}
        self._cells: dict[int, dict[int, _Fix]] = {}

    def __len__(self) -> int:
        """Drivers held, stale ones included until a sweep drops them."""
        return len(self._fixes)

    @property
    def silent_gateways(self) -> frozenset[str]:
        """The gateways whose drivers `nearest` passes over now."""
        return self._silent

    def heard(self, gateway: str, moment: float) -> None:
        """Gateway `gateway` spoke (a batch of reports, maybe empty) at `moment` (the
        caller's own clock, which only has to move forward)."""
        self._heard[gateway] = moment
        self._latest = max(self._latest, moment)
        self._judge_silence()

    def update(
        self, driver_id: int, lat: float, lng: float, at: float, gateway: str | None = None
    ) -> None:
        """The driver is at (lat, lng) as of `at` (seconds), as reported through
        `gateway`: the last report wins, whichever gateway it came through."""
        check_point(lat, lng)
        row = self._row(lat)
        cell = row * _ROW_STRIDE + self._column(row, lng)
        phi = lat * _RADIANS_PER_DEGREE
        fix = _Fix(phi, math.cos(phi), lng, at, cell, gateway)
        previous = self._fixes.get(driver_id)
        if previous is not None and previous.cell != cell:
            self._leave(driver_id, previous.cell)
        self._fixes[driver_id] = fix
        members = self._cells.get(cell)
        if members is None:
            self._cells[cell] = members = {}
        members[driver_id] = fix

    def forget(self, driver_id: int, gateway: str | None = None) -> None:
        """Drop the driver's location (busy, or offline); unknown drivers are ignored.
        With `gateway`, only if their last report came through it: a driver whose last
        socket on one gateway closed may still report through another."""
        fix = self._fixes.get(driver_id)
        if fix is None or (gateway is not None and fix.gateway != gateway):
            return
        del self._fixes[driver_id]
        self._leave(driver_id, fix.cell)

    def sweep(self, now: float, stale_seconds: float) -> int:
        """Drop every driver whose last report is older than `stale_seconds`, and every
        driver of a gateway silent that long (nothing it sent can still be fresh), and
        forget those gateways; how many drivers."""
        oldest = now - stale_seconds
        gone = {
            gateway
            for gateway, moment in self._heard.items()
            if moment < self._latest - stale_seconds
        }
        dropped = [
            driver_id
            for driver_id, fix in self._fixes.items()
            if fix.at < oldest or fix.gateway in gone
        ]
        for driver_id in dropped:
            self.forget(driver_id)
        if gone:
            for gateway in gone:
                del self._heard[gateway]
            self._judge_silence()
        return len(dropped)

    def nearest(
        self,
        lat: float,
        lng: float,
        *,
        radius_m: float,
        limit: int,
        now: float,
        stale_seconds: float,
        exclude: Collection[int] = (),
    ) -> list[tuple[int, float]]:
        """At most `limit` (driver_id, distance_m), nearest first (ties by id), of the
        drivers within `radius_m` of the point whose location is fresh (reported at or
        after `now - stale_seconds`) through a gateway that is not silent, and who are
        not in `exclude`."""
        check_point(lat, lng)
        if limit <= 0 or radius_m < 0 or not self._fixes:
            return []
        skip = exclude if isinstance(exclude, set | frozenset) else frozenset(exclude)
        query = _Query(lat, lng, limit, radius_m, now - stale_seconds, skip, self._silent)
        # Where drivers are few and far apart, most cells of a wide cap are empty:
        # past this many probes, measuring every driver is the cheaper way.
        probes_left = self._probes_per_driver * len(self._fixes)
        scanned: dict[int, tuple[int, int]] = {}
        reach = 0.0
        while True:
            reach = min(radius_m, reach + self._cell_m)
            for cell in self._cells_to_cover(lat, lng, reach, scanned):
                probes_left -= 1
                if probes_left < 0:
                    query = _Query(
                        lat, lng, limit, radius_m, now - stale_seconds, skip, self._silent
                    )
                    query.scan(self._fixes)
                    return query.result()
                members = self._cells.get(cell)
                if members:
                    query.scan(members)
            if reach >= radius_m or query.settled_within(reach):
                return query.result()

    def _judge_silence(self) -> None:
        quiet_since = self._latest - self._silent_seconds
        silent = [gateway for gateway, moment in self._heard.items() if moment < quiet_since]
        if silent or self._silent:
            self._silent = frozenset(silent)

    def _leave(self, driver_id: int, cell: int) -> None:
        members = self._cells[cell]
        del members[driver_id]
        if not members:
            del self._cells[cell]

    def _row(self, lat: float) -> int:
        return min(int((lat + 90.0) / self._row_deg), self._rows - 1)

    def _columns(self, row: int) -> int:
        columns = self._columns_by_row.get(row)
        if columns is None:
            south = row * self._row_deg - 90.0
            north = min(90.0, south + self._row_deg)
            poleward = max(abs(south), abs(north)) * _RADIANS_PER_DEGREE
            circumference = 2 * math.pi * EARTH_RADIUS_M * math.cos(poleward)
            columns = max(1, int(circumference / self._cell_m))
            self._columns_by_row[row] = columns
        return columns

    def _column(self, row: int, lng: float) -> int:
        columns = self._columns(row)
        return math.floor((lng + 180.0) * columns / 360.0) % columns

    def _cells_to_cover(
        self, lat: float, lng: float, reach_m: float, scanned: dict[int, tuple[int, int]]
    ) -> Iterator[int]:
        """The cells of the box around the cap of `reach_m` that `scanned` (each row's
        first and last column so far, unwrapped) does not hold yet; records them."""
        angle = (reach_m + _CAP_MARGIN_M) / EARTH_RADIUS_M
        south = lat - angle / _RADIANS_PER_DEGREE
        north = lat + angle / _RADIANS_PER_DEGREE
        cos_lat = math.cos(lat * _RADIANS_PER_DEGREE)
        # A cap holding a pole spans every longitude; otherwise its widest longitude
        # offset is asin(sin(angle) / cos(lat)), reached poleward of the centre.
        whole_rows = south <= -90.0 or north >= 90.0 or math.sin(angle) >= cos_lat
        half_width = 0.0 if whole_rows else math.asin(math.sin(angle) / cos_lat)
        half_width /= _RADIANS_PER_DEGREE
        for row in range(self._row(max(-90.0, south)), self._row(min(90.0, north)) + 1):
            columns = self._columns(row)
            before = scanned.get(row)
            if whole_rows:
                first, last = 0, columns
            else:
                first = math.floor((lng - half_width + 180.0) * columns / 360.0)
                last = math.floor((lng + half_width + 180.0) * columns / 360.0)
            if last - first + 1 >= columns:
                # The whole row: a window of one turn that holds what was scanned.
                first = before[0] if before is not None else first
                last = first + columns - 1
            scanned[row] = (first, last)
            base = row * _ROW_STRIDE
            if before is None:
                for column in range(first, last + 1):
                    yield base + column % columns
                continue
            for column in range(first, before[0]):
                yield base + column % columns
            for column in range(before[1] + 1, last + 1):
                yield base + column % columns


class _Query:
    """One `nearest` call's best drivers so far: a max-heap of (-distance, -driver_id)."""

    __slots__ = ("best", "cos_phi", "limit", "lng", "oldest", "phi", "silent", "skip", "worst")

    def __init__(
        self,
        lat: float,
        lng: float,
        limit: int,
        radius_m: float,
        oldest: float,
        skip: Collection[int],
        silent: Collection[str | None] = frozenset(),
    ) -> None:
        self.phi = lat * _RADIANS_PER_DEGREE
        self.cos_phi = math.cos(self.phi)
        self.lng = lng
        self.limit = limit
        self.oldest = oldest
        self.skip = skip
        self.silent = silent
        self.best: list[tuple[float, int]] = []
        # Farther than this never gets in: the radius, then the limit-th best.
        self.worst = radius_m

    def scan(self, members: dict[int, _Fix]) -> None:
        sin, asin, sqrt, radians_per_degree = math.sin, math.asin, math.sqrt, _RADIANS_PER_DEGREE
        phi1, cos_phi1, lng1 = self.phi, self.cos_phi, self.lng
        oldest, skip, silent = self.oldest, self.skip, self.silent
        best, limit, worst = self.best, self.limit, self.worst
        for driver_id, (phi2, cos_phi2, lng2, at, _cell, gateway) in members.items():
            if at < oldest or driver_id in skip or gateway in silent:
                continue
            # shared.locations.distance_m(query, driver), inlined (this loop is the
            # query's whole cost) with the same operations in the same order: the
            # index then ranks drivers exactly as that function does.
            half_chord = (
                sin((phi2 - phi1) / 2) ** 2
                + cos_phi1 * cos_phi2 * sin((lng2 - lng1) * radians_per_degree / 2) ** 2
            )
            distance = 2 * EARTH_RADIUS_M * asin(sqrt(min(1.0, half_chord)))
            if distance > worst:
                continue
            if len(best) < limit:
                heapq.heappush(best, (-distance, -driver_id))
            elif (-distance, -driver_id) > best[0]:
                heapq.heapreplace(best, (-distance, -driver_id))
            else:
                continue
            if len(best) == limit:
                worst = -best[0][0]
        self.worst = worst

    def settled_within(self, reach_m: float) -> bool:
        """Whether the answer is final once every driver within `reach_m` was seen."""
        return len(self.best) == self.limit and self.worst <= reach_m

    def result(self) -> list[tuple[int, float]]:
        return [(-driver_id, -distance) for distance, driver_id in sorted(self.best, reverse=True)]
