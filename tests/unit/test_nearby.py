"""dispatcher.nearby: the nearest fresh drivers to a point, checked against a full scan."""

from __future__ import annotations

import math
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dispatcher.nearby import NearbyDrivers
from shared.locations import EARTH_RADIUS_M, Point, distance_m

AMSTERDAM = (52.37, 4.89)
METRES_PER_DEGREE = EARTH_RADIUS_M * math.pi / 180
NOW = 1_000.0
STALE = 30.0


def offset(lat: float, lng: float, north_m: float, east_m: float) -> tuple[float, float]:
    """The point about `north_m` north and `east_m` east of (lat, lng), wrapped onto the globe."""
    moved_lat = min(90.0, max(-90.0, lat + north_m / METRES_PER_DEGREE))
    width = METRES_PER_DEGREE * max(math.cos(math.radians(lat)), 1e-9)
    moved_lng = (lng + east_m / width + 180.0) % 360.0 - 180.0
    return moved_lat, moved_lng


def textbook_haversine(lat1: float, lng1: float, lat2: float, lng2: float) -> float:
    """An independent haversine (the atan2 form) to check the index's distances against."""
    phi1, phi2 = math.radians(lat1), math.radians(lat2)
    dphi, dlmb = phi2 - phi1, math.radians(lng2 - lng1)
    a = math.sin(dphi / 2) ** 2 + math.cos(phi1) * math.cos(phi2) * math.sin(dlmb / 2) ** 2
    return 2 * EARTH_RADIUS_M * math.atan2(math.sqrt(a), math.sqrt(1 - a))


def nearest(
    index: NearbyDrivers,
    point: tuple[float, float],
    radius_m: float = 3000,
    limit: int = 8,
    now: float = NOW,
    exclude: frozenset[int] | list[int] = frozenset(),
) -> list[tuple[int, float]]:
    return index.nearest(
        *point, radius_m=radius_m, limit=limit, now=now, stale_seconds=STALE, exclude=exclude
    )


def test_drivers_come_back_nearest_first_with_their_distances() -> None:
    index = NearbyDrivers()
    places = {
        1: offset(*AMSTERDAM, 2000, 0),
        2: offset(*AMSTERDAM, 0, 100),
        3: offset(*AMSTERDAM, -600, -600),
        4: offset(*AMSTERDAM, 0, 2990),
    }
    for driver_id, (lat, lng) in places.items():
        index.update(driver_id, lat, lng, NOW)

    found = nearest(index, AMSTERDAM)

    assert [driver_id for driver_id, _ in found] == [2, 3, 1, 4]
    for driver_id, distance in found:
        assert distance == pytest.approx(textbook_haversine(*AMSTERDAM, *places[driver_id]), abs=1)
    assert found[0][1] == pytest.approx(100, abs=1)
    assert found[1][1] == pytest.approx(600 * math.sqrt(2), abs=1)


def test_a_driver_beyond_the_radius_is_not_found() -> None:
    index = NearbyDrivers()
    index.update(1, *offset(*AMSTERDAM, 3010, 0), NOW)
    index.update(2, *offset(*AMSTERDAM, 2990, 0), NOW)

    assert [driver_id for driver_id, _ in nearest(index, AMSTERDAM)] == [2]
    assert [driver_id for driver_id, _ in nearest(index, AMSTERDAM, radius_m=6000)] == [2, 1]


def test_limit_keeps_only_the_nearest() -> None:
    index = NearbyDrivers()
    for driver_id in range(1, 21):
        index.update(driver_id, *offset(*AMSTERDAM, 100 * driver_id, 0), NOW)

    assert [driver_id for driver_id, _ in nearest(index, AMSTERDAM, limit=3)] == [1, 2, 3]
    assert len(nearest(index, AMSTERDAM)) == 8
    assert nearest(index, AMSTERDAM, limit=0) == []


def test_a_stale_location_counts_as_unknown() -> None:
    index = NearbyDrivers()
    index.update(1, *offset(*AMSTERDAM, 100, 0), NOW - STALE - 0.001)
    index.update(2, *offset(*AMSTERDAM, 200, 0), NOW - STALE)

    assert [driver_id for driver_id, _ in nearest(index, AMSTERDAM)] == [2]
    # A fresh report brings the driver back.
    index.update(1, *offset(*AMSTERDAM, 100, 0), NOW)
    assert [driver_id for driver_id, _ in nearest(index, AMSTERDAM)] == [1, 2]


def test_excluded_drivers_are_skipped_and_the_next_nearest_offered() -> None:
    index = NearbyDrivers()
    for driver_id in range(1, 6):
        index.update(driver_id, *offset(*AMSTERDAM, 0, 100 * driver_id), NOW)

    found = nearest(index, AMSTERDAM, limit=2, exclude=frozenset({1, 3}))
    assert [driver_id for driver_id, _ in found] == [2, 4]
    found = nearest(index, AMSTERDAM, limit=2, exclude=[2, 4, 5])
    assert [driver_id for driver_id, _ in found] == [1, 3]


def test_a_moved_driver_is_found_only_at_the_new_place() -> None:
    index = NearbyDrivers()
    before = offset(*AMSTERDAM, 0, 50)
    after = offset(*AMSTERDAM, 10_000, 0)
    index.update(7, *before, NOW - 5)
    index.update(7, *after, NOW)

    assert nearest(index, AMSTERDAM) == []
    assert [driver_id for driver_id, _ in nearest(index, after)] == [7]
    assert len(index) == 1
    # A move within one cell too.
    index.update(7, *offset(*after, 10, 0), NOW)
    assert nearest(index, after)[0][1] == pytest.approx(10, abs=0.1)


def test_forget_drops_the_driver() -> None:
    index = NearbyDrivers()
    index.update(1, *AMSTERDAM, NOW)
    index.update(2, *offset(*AMSTERDAM, 100, 0), NOW)

    index.forget(1)
    index.forget(99)

    assert [driver_id for driver_id, _ in nearest(index, AMSTERDAM)] == [2]
    assert len(index) == 1


def test_sweep_drops_only_stale_drivers() -> None:
    index = NearbyDrivers()
    index.update(1, *AMSTERDAM, NOW - 100)
    index.update(2, *AMSTERDAM, NOW - 10)

    assert index.sweep(NOW, STALE) == 1
    assert len(index) == 1
    assert [driver_id for driver_id, _ in nearest(index, AMSTERDAM)] == [2]


@pytest.mark.parametrize(
    ("driver", "query"),
    [
        ((0.0, 179.999), (0.0, -179.999)),  # across the antimeridian
        ((-16.5, -180.0), (-16.5, 179.9995)),
        ((89.9995, 0.0), (89.9995, 180.0)),  # across the north pole
        ((-90.0, 45.0), (-89.999, -135.0)),  # the south pole itself
    ],
)
def test_the_antimeridian_and_the_poles_are_no_edge(
    driver: tuple[float, float], query: tuple[float, float]
) -> None:
    index = NearbyDrivers()
    index.update(1, *driver, NOW)

    [(driver_id, distance)] = nearest(index, query)

    assert driver_id == 1
    assert distance == pytest.approx(textbook_haversine(*query, *driver), abs=1)
    assert distance < 300


@pytest.mark.parametrize("point", [(90.1, 0.0), (0.0, 180.5), (math.nan, 0.0), (0.0, math.inf)])
def test_no_point_is_refused(point: tuple[float, float]) -> None:
    index = NearbyDrivers()
    with pytest.raises(ValueError):
        index.update(1, *point, NOW)
    with pytest.raises(ValueError):
        nearest(index, point)


latitudes = st.floats(-90, 90)
longitudes = st.floats(-180, 180)
queries = st.one_of(
    st.tuples(latitudes, longitudes),
    st.tuples(st.sampled_from([-90.0, -89.99, 89.99, 90.0]), longitudes),
    st.tuples(latitudes, st.sampled_from([-180.0, -179.99, 179.99, 180.0])),
)
# Drivers crowd within a few hundred metres of the point, or spread to twice the
# largest radius, so that some fall just outside it.
spreads_m = st.sampled_from([300.0, 3000.0, 25_000.0])


@st.composite
def scenes(draw: st.DrawFn) -> tuple[tuple[float, float], dict[int, tuple[float, float, float]]]:
    """A query point and drivers (lat, lng, reported at): most around it, some anywhere."""
    query = draw(queries)
    offsets_m = st.floats(-1, 1).map(draw(spreads_m).__mul__)
    places = {}
    for driver_id in range(draw(st.integers(0, 60))):
        if draw(st.integers(0, 4)):
            lat, lng = offset(*query, draw(offsets_m), draw(offsets_m))
        else:
            lat, lng = draw(latitudes), draw(longitudes)
        # Report ages around the stale limit.
        places[driver_id] = (lat, lng, NOW - draw(st.floats(0, 2 * STALE)))
    return query, places


@settings(max_examples=300, deadline=None)
@given(
    scene=scenes(),
    radius_m=st.one_of(st.sampled_from([0.0, 3000.0, 6000.0, 12000.0]), st.floats(0, 15_000)),
    limit=st.integers(0, 10),
    cell_m=st.sampled_from([100.0, 500.0, 3000.0]),
    # 0 always measures every driver; infinity always walks the cells.
    probes_per_driver=st.sampled_from([0.0, 3.0, math.inf]),
    excluded=st.sets(st.integers(0, 60), max_size=10),
)
def test_nearest_agrees_with_a_full_scan(
    scene: tuple[tuple[float, float], dict[int, tuple[float, float, float]]],
    radius_m: float,
    limit: int,
    cell_m: float,
    probes_per_driver: float,
    excluded: set[int],
) -> None:
    query, places = scene
    index = NearbyDrivers(cell_m, probes_per_driver)
    for driver_id, (lat, lng, at) in places.items():
        index.update(driver_id, lat, lng, at)

    found = nearest(index, query, radius_m=radius_m, limit=limit, exclude=frozenset(excluded))

    candidates = sorted(
        (distance_m(Point(*query), Point(lat, lng)), driver_id)
        for driver_id, (lat, lng, at) in places.items()
        if at >= NOW - STALE and driver_id not in excluded
    )
    expected = [(driver_id, d) for d, driver_id in candidates if d <= radius_m][:limit]
    assert found == expected
    for driver_id, distance in found:
        lat, lng, _ = places[driver_id]
        assert distance == pytest.approx(textbook_haversine(*query, lat, lng), abs=1)


@settings(max_examples=100, deadline=None)
@given(
    query=queries,
    seed=st.integers(0, 2**32),
    radius_m=st.sampled_from([300.0, 3000.0]),
    limit=st.integers(1, 10),
    cell_m=st.sampled_from([100.0, 500.0]),
)
def test_nearest_agrees_with_a_full_scan_in_a_crowd(
    query: tuple[float, float], seed: int, radius_m: float, limit: int, cell_m: float
) -> None:
    """Hundreds of drivers close together: where stopping one cap too early would show."""
    rng = random.Random(seed)
    places = {
        driver_id: offset(*query, rng.uniform(-2000, 2000), rng.uniform(-2000, 2000))
        for driver_id in range(300)
    }
    index = NearbyDrivers(cell_m, probes_per_driver=math.inf)
    for driver_id, (lat, lng) in places.items():
        index.update(driver_id, lat, lng, NOW)

    found = nearest(index, query, radius_m=radius_m, limit=limit)

    candidates = sorted(
        (distance_m(Point(*query), Point(*place)), driver_id) for driver_id, place in places.items()
    )
    assert found == [(driver_id, d) for d, driver_id in candidates if d <= radius_m][:limit]


def test_the_drivers_of_a_silent_gateway_are_passed_over_until_it_speaks_again() -> None:
    index = NearbyDrivers(silent_seconds=3)
    index.heard("a", 0.0)
    index.heard("b", 0.0)
    index.update(1, *offset(*AMSTERDAM, 100, 0), NOW, "a")
    index.update(2, *offset(*AMSTERDAM, 200, 0), NOW, "a")
    index.update(3, *offset(*AMSTERDAM, 1100, 0), NOW, "b")

    index.heard("b", 3.0)  # "a" silent for exactly the limit: still trusted
    assert [driver_id for driver_id, _ in nearest(index, AMSTERDAM)] == [1, 2, 3]
    index.heard("b", 3.5)
    assert index.silent_gateways == {"a"}
    assert [driver_id for driver_id, _ in nearest(index, AMSTERDAM)] == [3]
    # Its broker link came back: the locations it sent are good again while fresh.
    index.heard("a", 4.0)
    assert index.silent_gateways == frozenset()
    assert [driver_id for driver_id, _ in nearest(index, AMSTERDAM)] == [1, 2, 3]


def test_a_worker_that_stalled_takes_no_gateway_for_silent() -> None:
    """Silence is measured between gateways' words, not against the worker's clock: a
    worker that reads its backlog after a long pause finds every gateway there."""
    index = NearbyDrivers(silent_seconds=3)
    index.heard("a", 0.0)
    index.heard("b", 0.0)
    index.update(1, *AMSTERDAM, NOW, "a")

    index.heard("b", 100.0)
    index.heard("a", 100.2)

    assert index.silent_gateways == frozenset()
    assert [driver_id for driver_id, _ in nearest(index, AMSTERDAM)] == [1]


def test_a_driver_who_moved_to_another_gateway_outlives_the_one_that_died() -> None:
    """A gateway restarted (a new id): its drivers who reconnected and reported are
    offered; the ones who did not are passed over once the old id falls silent."""
    index = NearbyDrivers(silent_seconds=3)
    index.heard("old", 0.0)
    index.update(1, *offset(*AMSTERDAM, 100, 0), NOW, "old")
    index.update(2, *offset(*AMSTERDAM, 200, 0), NOW, "old")

    index.heard("new", 1.0)
    index.update(2, *offset(*AMSTERDAM, 250, 0), NOW, "new")
    index.heard("new", 4.0)

    assert [driver_id for driver_id, _ in nearest(index, AMSTERDAM)] == [2]


def test_entries_without_a_gateway_are_never_silent() -> None:
    index = NearbyDrivers(silent_seconds=3)
    index.update(1, *AMSTERDAM, NOW)
    index.heard("a", 0.0)
    index.heard("a", 60.0)

    assert [driver_id for driver_id, _ in nearest(index, AMSTERDAM)] == [1]


def test_gone_from_one_gateway_forgets_only_what_came_through_it() -> None:
    index = NearbyDrivers()
    index.update(1, *AMSTERDAM, NOW, "a")
    index.update(1, *AMSTERDAM, NOW + 1, "b")  # the driver's other device reports too

    index.forget(1, "a")  # their socket on "a" closed; they are still on "b"
    assert [driver_id for driver_id, _ in nearest(index, AMSTERDAM, now=NOW + 1)] == [1]
    index.forget(1, "b")
    assert len(index) == 0
    index.update(2, *AMSTERDAM, NOW, "b")
    index.forget(2)  # busy, whichever gateway says so
    assert len(index) == 0


def test_sweep_drops_the_drivers_of_a_gateway_silent_as_long_as_a_location_stays_fresh() -> None:
    index = NearbyDrivers(silent_seconds=3)
    index.heard("a", 0.0)
    index.heard("b", 0.0)
    index.update(1, *AMSTERDAM, NOW, "a")
    index.update(2, *AMSTERDAM, NOW, "b")
    index.heard("b", STALE - 1)

    assert index.sweep(NOW, STALE) == 0  # silent, but it may still speak again
    index.heard("b", STALE + 1)
    assert index.sweep(NOW, STALE) == 1
    assert len(index) == 1
    assert index.silent_gateways == frozenset()  # "a" is forgotten, not kept for ever
    # A late word of the forgotten gateway is a gateway like any other.
    index.heard("a", STALE + 1.5)
    index.update(1, *AMSTERDAM, NOW, "a")
    assert [driver_id for driver_id, _ in nearest(index, AMSTERDAM)] == [1, 2]


@settings(max_examples=200, deadline=None)
@given(
    scene=scenes(),
    gateways=st.lists(st.sampled_from([None, "a", "b", "c"]), min_size=61, max_size=61),
    heard=st.fixed_dictionaries({}, optional={name: st.floats(0, 10) for name in ("a", "b", "c")}),
    limit=st.integers(1, 10),
)
def test_nearest_agrees_with_a_full_scan_of_the_gateways_still_heard(
    scene: tuple[tuple[float, float], dict[int, tuple[float, float, float]]],
    gateways: list[str | None],
    heard: dict[str, float],
    limit: int,
) -> None:
    query, places = scene
    index = NearbyDrivers(silent_seconds=3)
    for gateway, moment in heard.items():
        index.heard(gateway, moment)
    for driver_id, (lat, lng, at) in places.items():
        index.update(driver_id, lat, lng, at, gateways[driver_id])

    found = nearest(index, query, radius_m=6000, limit=limit)

    latest = max(heard.values(), default=0.0)
    silent = {gateway for gateway, moment in heard.items() if moment < latest - 3}
    candidates = sorted(
        (distance_m(Point(*query), Point(lat, lng)), driver_id)
        for driver_id, (lat, lng, at) in places.items()
        if at >= NOW - STALE and gateways[driver_id] not in silent
    )
    assert found == [(driver_id, d) for d, driver_id in candidates if d <= 6000][:limit]
