"""`python -m bench.nearby`: how fast the dispatcher's nearby-drivers index answers,
measured against the alternatives it was chosen over.

10,000 drivers spread uniformly over a 30 x 30 km square around Amsterdam, and
`--queries` random pick-up points in the same square. Each point is asked as a trip
that widens would ask it: the 8 nearest within 3 km, then within 6 km without those
8, then within 12 km without the 16 offered so far. Indexes compared:

- the grid of `dispatcher.nearby` (the one dispatch uses), at two cell sizes;
- h3 cells (when the `h3` package is installed; it is no dependency of the project),
  scanned ring by ring around the point's cell until the answer is settled;
- a full scan of every driver (`--full-scan-queries` points only: it is slow).

All share one scan of a cell's drivers, so only the cell structure differs. The
full scan's answers are the reference: the table says how many of the points each
index answered identically. `update` is timed moving random drivers by up to 70 m
(5 s at 50 km/h), the memory per driver with tracemalloc. Single process, a few
seconds; prints one Markdown table and writes nothing.
"""

from __future__ import annotations

import argparse
import functools
import gc
import importlib
import math
import os
import platform
import random
import time
import tracemalloc
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from dispatcher.nearby import NearbyDrivers, _Fix, _Query, check_point
from shared.locations import EARTH_RADIUS_M

CENTRE = (52.37, 4.89)
SIDE_M = 30_000.0
DRIVERS = 10_000
RADII_M = (3000.0, 6000.0, 12000.0)
LIMIT = 8
STALE_SECONDS = 30.0
UPDATES = 20_000
MOVE_M = 70.0
METRES_PER_DEGREE = EARTH_RADIUS_M * math.pi / 180
H3_RESOLUTIONS = (8, 9)
# Points each index answers before the next one takes its turn.
BLOCK = 250


class Index(Protocol):
    def update(self, driver_id: int, lat: float, lng: float, at: float) -> None: ...

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
    ) -> list[tuple[int, float]]: ...


class H3Drivers:
    """The same index on h3 cells: each driver in its cell at `resolution`; a query
    scans the point's cell, then ring after ring of neighbours, until the answer is
    settled within the distance the rings so far are sure to cover."""

    def __init__(self, h3: Any, resolution: int) -> None:
        self._h3 = h3
        self._resolution = resolution
        self._edge_m = float(h3.average_hexagon_edge_length(resolution, unit="m"))
        self._fixes: dict[int, _Fix] = {}
        self._cells: dict[int, dict[int, _Fix]] = {}

    def update(self, driver_id: int, lat: float, lng: float, at: float) -> None:
        check_point(lat, lng)
        cell = int(self._h3.latlng_to_cell(lat, lng, self._resolution))
        phi = math.radians(lat)
        fix = _Fix(phi, math.cos(phi), lng, at, cell)
        previous = self._fixes.get(driver_id)
        if previous is not None and previous.cell != cell:
            members = self._cells[previous.cell]
            del members[driver_id]
            if not members:
                del self._cells[previous.cell]
        self._fixes[driver_id] = fix
        self._cells.setdefault(cell, {})[driver_id] = fix

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
        skip = exclude if isinstance(exclude, set | frozenset) else frozenset(exclude)
        query = _Query(lat, lng, limit, radius_m, now - stale_seconds, skip)
        origin = self._h3.latlng_to_cell(lat, lng, self._resolution)
        ring = 0
        while True:
            for cell in self._h3.grid_ring(origin, ring):
                members = self._cells.get(cell)
                if members:
                    query.scan(members)
            covered = self._covered_m(ring)
            if covered >= radius_m or query.settled_within(covered):
                return query.result()
            ring += 1

    def _covered_m(self, ring: int) -> float:
        """How far around the point every driver has been seen once rings up to `ring`
        were scanned. Ring k+1's centres lie at least 1.5 (k + 1) edges from the
        origin's, a cell reaches one edge beyond its centre and the point lies up to
        one edge from the origin's; hexagons vary some 20% around the average edge."""
        return max(0.0, (1.5 * (ring + 1) - 2.0) * self._edge_m * 0.8)


@dataclass(frozen=True)
class Contender:
    name: str
    build: Callable[[], Index]
    queries: int


@dataclass
class Measured:
    name: str
    nearest_us: dict[float, list[float]]
    update_us: list[float]
    bytes_per_driver: float
    agreed: int
    compared: int


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.nearby", description=__doc__)
    parser.add_argument("--queries", type=int, default=10_000, help="pick-up points per index")
    parser.add_argument(
        "--full-scan-queries", type=int, default=200, help="pick-up points for the full scan"
    )
    parser.add_argument("--seed", type=int, default=7)
    return parser.parse_args()


def random_point(rng: random.Random) -> tuple[float, float]:
    half = SIDE_M / 2
    return shifted(CENTRE, rng.uniform(-half, half), rng.uniform(-half, half))


def moved(rng: random.Random, point: tuple[float, float]) -> tuple[float, float]:
    return shifted(point, rng.uniform(-MOVE_M, MOVE_M), rng.uniform(-MOVE_M, MOVE_M))


def shifted(point: tuple[float, float], north_m: float, east_m: float) -> tuple[float, float]:
    lat, lng = point
    return (
        lat + north_m / METRES_PER_DEGREE,
        lng + east_m / (METRES_PER_DEGREE * math.cos(math.radians(lat))),
    )


def contenders(args: argparse.Namespace) -> list[Contender]:
    found: list[Contender] = [
        Contender("grid, 500 m cells (dispatcher.nearby)", NearbyDrivers, args.queries),
        Contender("grid, 1000 m cells", lambda: NearbyDrivers(1000.0), args.queries),
    ]
    try:
        h3 = importlib.import_module("h3.api.basic_int")
        version = importlib.import_module("h3").__version__
    except ImportError:
        h3 = None
    for resolution in H3_RESOLUTIONS if h3 is not None else ():
        found.append(
            Contender(
                f"h3 {version}, resolution {resolution}, ring by ring",
                functools.partial(H3Drivers, h3, resolution),
                args.queries,
            )
        )
    found.append(
        Contender(
            "full scan of every driver",
            lambda: NearbyDrivers(probes_per_driver=0.0),
            args.full_scan_queries,
        )
    )
    return found


def ask(index: Index, point: tuple[float, float]) -> tuple[list[list[int]], list[float]]:
    """A widening trip's questions: each radius excludes who was offered before."""
    offered: set[int] = set()
    answers: list[list[int]] = []
    took_us: list[float] = []
    for radius_m in RADII_M:
        started = time.perf_counter_ns()
        found = index.nearest(
            *point,
            radius_m=radius_m,
            limit=LIMIT,
            now=1.0,
            stale_seconds=STALE_SECONDS,
            exclude=offered,
        )
        took_us.append((time.perf_counter_ns() - started) / 1000)
        answers.append([driver_id for driver_id, _ in found])
        offered.update(answers[-1])
    return answers, took_us


def filled(contender: Contender, drivers: Sequence[tuple[float, float]]) -> Index:
    index = contender.build()
    for driver_id, (lat, lng) in enumerate(drivers):
        index.update(driver_id, lat, lng, 0.0)
    return index


def bytes_per_driver(contender: Contender, drivers: Sequence[tuple[float, float]]) -> float:
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        index = filled(contender, drivers)
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    del index
    return held / len(drivers)


def measure(
    found: Sequence[Contender],
    drivers: Sequence[tuple[float, float]],
    points: Sequence[tuple[float, float]],
    seed: int,
) -> list[Measured]:
    """The indexes take turns, a block of points each, so that a busy moment of the
    machine falls on all of them alike; the last contender's answers are the reference."""
    results = [
        Measured(c.name, {r: [] for r in RADII_M}, [], bytes_per_driver(c, drivers), 0, 0)
        for c in found
    ]
    indexes = [filled(c, drivers) for c in found]
    answers: list[list[list[list[int]]]] = [[] for _ in found]
    for block in range(0, len(points), BLOCK):
        for contender, index, result, given in zip(found, indexes, results, answers, strict=True):
            gc.collect()
            for point in points[block : min(block + BLOCK, contender.queries)]:
                answer, took_us = ask(index, point)
                given.append(answer)
                for radius_m, us in zip(RADII_M, took_us, strict=True):
                    result.nearest_us[radius_m].append(us)
    for result, given in zip(results, answers, strict=True):
        result.compared = min(len(given), len(answers[-1]))
        result.agreed = sum(a == b for a, b in zip(given, answers[-1], strict=False))

    rng = random.Random(seed)
    where = list(drivers)
    for _ in range(UPDATES):
        driver_id = rng.randrange(len(where))
        where[driver_id] = moved(rng, where[driver_id])
        for index, result in zip(indexes, results, strict=True):
            started = time.perf_counter_ns()
            index.update(driver_id, *where[driver_id], 1.0)
            result.update_us.append((time.perf_counter_ns() - started) / 1000)
    return results


def rank(samples: Sequence[float], percent: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(samples)
    return ordered[max(0, math.ceil(percent / 100 * len(ordered)) - 1)]


def table(results: Sequence[Measured], args: argparse.Namespace) -> str:
    radii = " | ".join(f"nearest {radius_m / 1000:g} km p50 / p99 (µs)" for radius_m in RADII_M)
    lines = [
        f"{DRIVERS:,} drivers in {SIDE_M / 1000:g} x {SIDE_M / 1000:g} km around {CENTRE}, "
        f"limit {LIMIT}, widening {' / '.join(f'{r / 1000:g}' for r in RADII_M)} km "
        f"(each excluding the drivers offered before); seed {args.seed}. "
        f"Python {platform.python_version()}, {os.cpu_count()} CPUs, one process.",
        "",
        f"| index | queries | {radii} | update p50 / p99 (µs) | memory per driver (bytes) "
        "| same answers as the full scan |",
        "|---|---:|" + "---:|" * len(RADII_M) + "---:|---:|---:|",
    ]
    for result in results:
        cells = " | ".join(
            f"{rank(result.nearest_us[radius_m], 50):.0f} / "
            f"{rank(result.nearest_us[radius_m], 99):.0f}"
            for radius_m in RADII_M
        )
        lines.append(
            f"| {result.name} | {len(result.nearest_us[RADII_M[0]]):,} | {cells} "
            f"| {rank(result.update_us, 50):.1f} / {rank(result.update_us, 99):.1f} "
            f"| {result.bytes_per_driver:.0f} | {result.agreed} of {result.compared} |"
        )
    return "\n".join(lines)


def main() -> None:
    args = parse_args()
    rng = random.Random(args.seed)
    drivers = [random_point(rng) for _ in range(DRIVERS)]
    points = [random_point(rng) for _ in range(max(args.queries, args.full_scan_queries))]
    found = contenders(args)
    print(table(measure(found, drivers, points, args.seed), args))
    if not any(c.name.startswith("h3") for c in found):
        print("\n(h3 is not installed: `pip install h3` to compare it.)")


if __name__ == "__main__":
    main()
