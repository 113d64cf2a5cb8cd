"""The gateway's Prometheus metrics, served at /metrics."""

from __future__ import annotations

import time
from datetime import datetime

import orjson
from prometheus_client import Counter, Gauge, Histogram

from shared.commands import COMMAND_TYPES, UPDATE_LOCATION

OPEN_CONNECTIONS = Gauge(
    "taxi_gateway_open_connections", "WebSockets open now, by the user's group.", ["role"]
)
SERVING = Gauge(
    "taxi_gateway_serving",
    "1 while this gateway process accepts connections on the HTTP port (its start-up "
    "done), 0 while it starts and once it stops. With several processes on one port, "
    "the one readiness each process answers for itself.",
)
FRAMES_IN = Counter(
    "taxi_gateway_frames_in_total",
    "Frames received from clients, by type (unknown types count as 'unknown').",
    ["type"],
)
FRAMES_OUT = Counter("taxi_gateway_frames_out_total", "Frames sent to clients, by type.", ["type"])
ERRORS = Counter(
    "taxi_gateway_errors_total", "Error frames sent to clients, by error code.", ["code"]
)
PUBLISH_SECONDS = Histogram(
    "taxi_gateway_publish_seconds",
    "Time from publishing a command to the broker's confirm.",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)

LOCATION_SECONDS = Histogram(
    "taxi_gateway_location_seconds",
    "A driver's location, from its report reaching the driver's gateway to its frame "
    "queued for the rider's sockets on the rider's gateway (the gateways' clocks).",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)

LOCATIONS_THINNED = Counter(
    "taxi_gateway_locations_thinned_total",
    "Driver location reports dropped for coming within a second of the driver's last one.",
)
LOCATIONS_DROPPED = Counter(
    "taxi_gateway_locations_dropped_total",
    "Driver location reports not passed on to dispatch (the broker was away or behind).",
)

REVOCATION_CHECKS = Counter(
    "taxi_gateway_revocation_checks_total",
    "Looks at the sessions that ended since the last one (gateway.live.revocations).",
)
SOCKETS_REVOKED = Counter(
    "taxi_gateway_sockets_revoked_total",
    "Sockets closed with 4003 because the session they were opened in ended.",
)

KNOWN_FRAME_TYPES = frozenset({"echo.message", UPDATE_LOCATION, *COMMAND_TYPES})
# Each type's counter, looked up once: `labels()` takes a lock and builds a key on
# every call, a cost every frame of every client would pay.
_FRAMES_IN_BY_TYPE = {
    frame_type: FRAMES_IN.labels(frame_type) for frame_type in (*KNOWN_FRAME_TYPES, "unknown")
}


def frame_in(frame_type: str | None) -> None:
    """Count a client frame; types are bounded to the known ones to keep label sets small."""
    counter = _FRAMES_IN_BY_TYPE.get(frame_type) if frame_type else None
    (counter or _FRAMES_IN_BY_TYPE["unknown"]).inc()


def location_passed_on(frame: bytes) -> None:
    """Time a `driver.location` frame from its report (its `at`) to now."""
    located_at = datetime.fromisoformat(orjson.loads(frame)["data"]["at"]).timestamp()
    LOCATION_SECONDS.observe(max(0.0, time.time() - located_at))
