"""Points and locations: what a usable coordinate is, and how far apart two points are."""

from __future__ import annotations

import json
import math
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from shared.locations import (
    EARTH_RADIUS_M,
    Location,
    Point,
    distance_m,
    location_from,
    optional_point_from,
    point_from,
)
from shared.wire import ErrorCode, FrameError

REQUEST = "update.location"
AMSTERDAM_CENTRAAL = Point(52.378901, 4.900581)
DAM_SQUARE = Point(52.373080, 4.892453)


def refusal(parse: Any, *args: Any) -> FrameError:
    with pytest.raises(FrameError) as refused:
        parse(*args)
    assert refused.value.code == ErrorCode.INVALID_DATA
    assert refused.value.request == args[-1]
    return refused.value


# Points


def test_a_point_is_read_from_its_object() -> None:
    assert point_from({"lat": 52.37, "lng": 4.89}, "pick_up", "create.trip") == Point(52.37, 4.89)


def test_whole_degrees_are_read_as_floats() -> None:
    point = point_from({"lat": 52, "lng": -4}, "pick_up", "create.trip")

    assert point == Point(52.0, -4.0)
    assert isinstance(point.lat, float) and isinstance(point.lng, float)


@pytest.mark.parametrize(
    ("lat", "lng"), [(-90, -180), (90, 180), (0, 0), (-0.0, -0.0), (89.999999, 179.999999)]
)
def test_the_edges_of_the_map_are_on_it(lat: float, lng: float) -> None:
    assert point_from({"lat": lat, "lng": lng}, "pick_up", "create.trip") == Point(lat, lng)


def test_other_fields_of_a_point_are_ignored() -> None:
    value = {"lat": 1.5, "lng": 2.5, "accuracy": 10}

    assert point_from(value, "pick_up", "create.trip") == Point(1.5, 2.5)


def test_a_point_reads_back_from_its_payload() -> None:
    point = Point(-33.8568, 151.2153)

    assert point.payload() == {"lat": -33.8568, "lng": 151.2153}
    assert point_from(orjson.loads(orjson.dumps(point.payload())), "p", "r") == point


@pytest.mark.parametrize(
    ("value", "field", "said"),
    [
        ({"lat": 91, "lng": 0}, "lat", "from -90 to 90"),
        ({"lat": -90.0001, "lng": 0}, "lat", "from -90 to 90"),
        ({"lat": 0, "lng": -181}, "lng", "from -180 to 180"),
        ({"lat": 0, "lng": 180.5}, "lng", "from -180 to 180"),
        ({"lat": "52.3", "lng": 4.9}, "lat", "not a string"),
        ({"lat": 52.3, "lng": True}, "lng", "not a boolean"),
        ({"lat": {}, "lng": 4.9}, "lat", "not an object"),
        ({"lat": [52.3], "lng": 4.9}, "lat", "not an array"),
        ({"lat": None, "lng": 4.9}, "lat", "not null"),
        ({"lng": 4.9}, "lat", "missing"),
        ({"lat": 52.3}, "lng", "missing"),
        ({"lat": math.inf, "lng": 4.9}, "lat", "finite"),
        ({"lat": 52.3, "lng": -math.inf}, "lng", "finite"),
        ({"lat": math.nan, "lng": 4.9}, "lat", "finite"),
        ({"lat": 10**400, "lng": 4.9}, "lat", "from -90 to 90"),
    ],
)
def test_a_bad_coordinate_is_refused_naming_it(value: Any, field: str, said: str) -> None:
    refused = refusal(point_from, value, "pick_up", "create.trip")

    assert f'"pick_up.{field}"' in refused.message
    assert said in refused.message


def test_a_number_too_big_for_a_double_is_refused_as_not_finite() -> None:
    # Python's json reads 1e400 as inf (orjson refuses it before it gets here).
    value = json.loads('{"lat": 1e400, "lng": 4.9}')
    assert value["lat"] == math.inf

    refused = refusal(point_from, value, "drop_off", "create.trip")

    assert '"drop_off.lat"' in refused.message
    assert "finite" in refused.message


@pytest.mark.parametrize("value", ["52.3,4.9", [52.3, 4.9], 52.3, True, ""])
def test_a_point_must_be_an_object(value: Any) -> None:
    refused = refusal(point_from, value, "pick_up", "create.trip")

    assert refused.message.startswith('"pick_up" must be an object')


def test_an_absent_or_null_optional_point_is_none() -> None:
    assert optional_point_from({}, "pick_up", "create.trip") is None
    assert optional_point_from({"pick_up": None}, "pick_up", "create.trip") is None
    assert optional_point_from(
        {"pick_up": {"lat": 1, "lng": 2}}, "pick_up", "create.trip"
    ) == Point(1.0, 2.0)


@given(st.floats(allow_nan=False, allow_infinity=False), st.floats())
def test_a_point_is_accepted_exactly_when_both_coordinates_are_in_range(
    lat: float, lng: float
) -> None:
    on_the_map = -90 <= lat <= 90 and -180 <= lng <= 180
    try:
        point = point_from({"lat": lat, "lng": lng}, "pick_up", "create.trip")
    except FrameError as refused:
        assert not on_the_map
        assert refused.code == ErrorCode.INVALID_DATA
        assert "pick_up." in refused.message
    else:
        assert on_the_map
        assert point == Point(lat, lng)


@given(
    st.one_of(
        st.none(),
        st.booleans(),
        st.text(),
        st.integers(min_value=91) | st.integers(max_value=-91),
        st.lists(st.integers(), max_size=3),
        st.dictionaries(st.text(max_size=3), st.integers(), max_size=3),
    )
)
def test_no_hostile_latitude_gets_through(lat: Any) -> None:
    refused = refusal(point_from, {"lat": lat, "lng": 0}, "pick_up", "create.trip")

    assert '"pick_up.lat"' in refused.message


# A driver's location


def test_a_location_needs_only_its_point() -> None:
    assert location_from({"lat": 52.37, "lng": 4.89}, REQUEST) == Location(Point(52.37, 4.89))


def test_a_location_may_say_where_the_driver_heads_and_how_fast() -> None:
    data = {"lat": 52.37, "lng": 4.89, "heading": 359.5, "speed_mps": 13}

    assert location_from(data, REQUEST) == Location(Point(52.37, 4.89), 359.5, 13.0)


def test_a_null_heading_or_speed_is_unknown() -> None:
    data = {"lat": 1, "lng": 2, "heading": None, "speed_mps": None}

    assert location_from(data, REQUEST) == Location(Point(1.0, 2.0), None, None)


@pytest.mark.parametrize(("heading", "speed"), [(0, 0), (360, 0), (0.0, 1e6)])
def test_the_edges_of_heading_and_speed_are_accepted(heading: float, speed: float) -> None:
    location = location_from({"lat": 0, "lng": 0, "heading": heading, "speed_mps": speed}, REQUEST)

    assert (location.heading, location.speed_mps) == (heading, speed)


@pytest.mark.parametrize(
    ("extra", "field"),
    [
        ({"heading": -0.1}, "heading"),
        ({"heading": 360.01}, "heading"),
        ({"heading": "N"}, "heading"),
        ({"heading": math.inf}, "heading"),
        ({"heading": True}, "heading"),
        ({"speed_mps": -1}, "speed_mps"),
        ({"speed_mps": math.inf}, "speed_mps"),
        ({"speed_mps": "fast"}, "speed_mps"),
        ({"speed_mps": {}}, "speed_mps"),
        ({"lat": 90.5}, "lat"),
        ({"lng": False}, "lng"),
    ],
)
def test_a_bad_location_field_is_refused_naming_it(extra: dict[str, Any], field: str) -> None:
    refused = refusal(location_from, {"lat": 52.37, "lng": 4.89, **extra}, REQUEST)

    assert refused.message.startswith(f'"{field}"')


@pytest.mark.parametrize("data", [None, [], "52.37,4.89", 5, True])
def test_a_location_must_be_an_object(data: Any) -> None:
    refused = refusal(location_from, data, REQUEST)

    assert '"data"' in refused.message


# Distance


def test_amsterdam_centraal_to_dam_square_is_under_a_kilometre() -> None:
    # 850 m as the crow flies, station entrance to the National Monument.
    assert distance_m(AMSTERDAM_CENTRAAL, DAM_SQUARE) == pytest.approx(850, abs=10)


def test_a_degree_of_latitude_is_about_111_km() -> None:
    assert distance_m(Point(0, 0), Point(1, 0)) == pytest.approx(111_195, abs=1)


def test_london_to_paris() -> None:
    london, paris = Point(51.5074, -0.1278), Point(48.8566, 2.3522)

    assert distance_m(london, paris) == pytest.approx(343_500, rel=0.005)


def test_the_same_point_is_no_distance_away() -> None:
    assert distance_m(DAM_SQUARE, DAM_SQUARE) == 0


@pytest.mark.parametrize(
    ("a", "b"),
    [
        (Point(90, 0), Point(-90, 0)),
        (Point(0, 0), Point(0, 180)),
        (Point(52.37, 4.89), Point(-52.37, -175.11)),
    ],
)
def test_antipodes_are_half_the_earth_apart(a: Point, b: Point) -> None:
    assert distance_m(a, b) == pytest.approx(math.pi * EARTH_RADIUS_M)


def test_across_the_date_line_is_the_short_way_round() -> None:
    assert distance_m(Point(0, 179.9), Point(0, -179.9)) == pytest.approx(22_239, abs=1)


coordinates = st.builds(
    Point,
    st.floats(min_value=-90, max_value=90),
    st.floats(min_value=-180, max_value=180),
)


@given(coordinates, coordinates)
def test_distance_is_symmetric_and_bounded(a: Point, b: Point) -> None:
    there = distance_m(a, b)

    assert there == pytest.approx(distance_m(b, a), abs=1e-6)
    assert 0 <= there <= math.pi * EARTH_RADIUS_M + 1e-6
