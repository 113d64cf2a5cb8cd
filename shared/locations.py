"""Places on the earth: points, a driver's reported location, and the distance between two.

Clients send WGS84 degrees as JSON numbers. The parsers here are the one place that
decides what a usable coordinate is, so the gateway (a driver's `update.location`),
the commands (a trip's `pick_up` and `drop_off`) and the dispatcher agree on it.
A refusal is a `FrameError` naming the field, so the client can tell what to fix.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from shared import wire
from shared.wire import ErrorCode, FrameError

# The frame that shows a trip's rider where its driver is.
DRIVER_LOCATION = "driver.location"

# The IUGG mean radius of the WGS84 ellipsoid: the sphere that fits it best on average.
EARTH_RADIUS_M = 6_371_008.8
LATITUDE_RANGE = (-90.0, 90.0)
LONGITUDE_RANGE = (-180.0, 180.0)
HEADING_RANGE = (0.0, 360.0)


@dataclass(frozen=True, slots=True)
class Point:
    """WGS84 degrees: `lat` in [-90, 90], `lng` in [-180, 180]."""

    lat: float
    lng: float

    def payload(self) -> dict[str, float]:
        """The point as clients send and receive it."""
        return {"lat": self.lat, "lng": self.lng}


@dataclass(frozen=True, slots=True)
class Location:
    """Where a driver says they are, and, when their device knows, where they head
    (degrees clockwise from north) and how fast (metres a second)."""

    point: Point
    heading: float | None = None
    speed_mps: float | None = None


def driver_location_frame(trip_id: str, location: Location, at: float) -> bytes:
    """`driver.location` for the rider of trip `trip_id`: where the driver was at `at`
    (seconds since the epoch), told as trip times are (ISO 8601, UTC)."""
    moment = datetime.fromtimestamp(at, UTC).isoformat().replace("+00:00", "Z")
    return wire.encode(
        {
            "type": DRIVER_LOCATION,
            "data": {
                "trip_id": trip_id,
                "lat": location.point.lat,
                "lng": location.point.lng,
                "heading": location.heading,
                "at": moment,
            },
        }
    )


def point_from(value: Any, name: str, request: str) -> Point:
    """The point object `{"lat": .., "lng": ..}` a client sent as field `name`."""
    if not isinstance(value, dict):
        raise FrameError(
            ErrorCode.INVALID_DATA,
            f'"{name}" must be an object like {{"lat": 52.37, "lng": 4.89}}, not {_kind(value)}',
            request,
        )
    return _point(value, f"{name}.", request)


def optional_point_from(data: dict[str, Any], name: str, request: str) -> Point | None:
    """Field `name` of `data` as a point; None when it is absent or null."""
    value = data.get(name)
    return None if value is None else point_from(value, name, request)


def location_from(data: Any, request: str) -> Location:
    """A driver's location report: `{"lat", "lng", "heading"?, "speed_mps"?}`."""
    if not isinstance(data, dict):
        raise FrameError(
            ErrorCode.INVALID_DATA,
            f'"data" must be an object like {{"lat": 52.37, "lng": 4.89}}, not {_kind(data)}',
            request,
        )
    return Location(
        point=_point(data, "", request),
        heading=_optional_number(data, "heading", HEADING_RANGE, request),
        speed_mps=_optional_number(data, "speed_mps", (0.0, math.inf), request),
    )


def distance_m(a: Point, b: Point) -> float:
    """The great-circle distance in metres (haversine on a sphere of the mean radius).

    The sphere errs by under 0.5% against the ellipsoid: enough to rank drivers by
    nearness, and far cheaper than Vincenty's iteration.
    """
    lat_a, lat_b = math.radians(a.lat), math.radians(b.lat)
    half_chord = (
        math.sin((lat_b - lat_a) / 2) ** 2
        + math.cos(lat_a) * math.cos(lat_b) * math.sin(math.radians(b.lng - a.lng) / 2) ** 2
    )
    # Rounding can push the antipodes' value a hair above 1, outside asin's domain.
    return 2 * EARTH_RADIUS_M * math.asin(math.sqrt(min(1.0, half_chord)))


def _point(data: dict[str, Any], prefix: str, request: str) -> Point:
    return Point(
        lat=_number(data, "lat", LATITUDE_RANGE, request, prefix),
        lng=_number(data, "lng", LONGITUDE_RANGE, request, prefix),
    )


def _optional_number(
    data: dict[str, Any], name: str, bounds: tuple[float, float], request: str
) -> float | None:
    return None if data.get(name) is None else _number(data, name, bounds, request)


def _number(
    data: dict[str, Any],
    name: str,
    bounds: tuple[float, float],
    request: str,
    prefix: str = "",
) -> float:
    value = data.get(name)
    low, high = bounds
    # The usual case first: a finite float in range (NaN fails the comparison).
    if type(value) is float and low <= value <= high and math.isfinite(value):
        return value
    field = f'"{prefix}{name}"'
    if name not in data:
        raise FrameError(
            ErrorCode.INVALID_DATA, f"{field} is missing; it must be {_wanted(bounds)}", request
        )
    # A boolean is an int to Python, but `true` is no coordinate.
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise FrameError(
            ErrorCode.INVALID_DATA,
            f"{field} must be {_wanted(bounds)}, not {_kind(value)}",
            request,
        )
    # orjson already refuses NaN, Infinity and 1e400 in a frame; Python's json module
    # reads all three (1e400 as inf), and no caller should depend on which one ran.
    if isinstance(value, float) and not math.isfinite(value):
        raise FrameError(
            ErrorCode.INVALID_DATA, f"{field} must be a finite number ({_wanted(bounds)})", request
        )
    # Compared before float(): an integer of 400 digits would overflow it.
    if not low <= value <= high:
        raise FrameError(ErrorCode.INVALID_DATA, f"{field} must be {_wanted(bounds)}", request)
    return float(value)


def _wanted(bounds: tuple[float, float]) -> str:
    low, high = bounds
    if high == math.inf:
        return f"a number of at least {low:g}"
    return f"a number from {low:g} to {high:g}"


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return "a number"
