"""The dispatcher's Prometheus metrics, and the app each worker serves them from with
its health checks (`--metrics-port`)."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Iterable

from prometheus_client import Counter, Gauge, Histogram
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

# The embedded server itself lives in shared.metrics, for the gateway and the workers
# alike; the worker finds it here.
from shared.metrics import metrics_app
from shared.trips import Status, Trip

# Seconds, for every latency histogram: a few ms on a LAN up to an outage's 10 s.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)

COMMANDS = Counter(
    "taxi_dispatcher_commands_total",
    "Commands handled, by type and outcome "
    "(applied, refused, duplicate, failed, dead_lettered, invalid).",
    ["type", "outcome"],
)
HANDLER_SECONDS = Histogram(
    "taxi_dispatcher_handler_seconds",
    "Time to apply one command: its transaction, publishing and acknowledging.",
    ["type"],
    buckets=LATENCY_BUCKETS,
)
REDELIVERIES = Counter(
    "taxi_dispatcher_redeliveries_total", "Commands the broker delivered more than once."
)
DEAD_LETTERED = Counter(
    "taxi_dispatcher_dead_lettered_total", "Commands sent to the dead-letter queue."
)
OUTBOX_BACKLOG = Gauge(
    "taxi_dispatcher_outbox_backlog",
    "Notifications waiting in the outbox for this deployment, as the relay last saw them.",
)


# What the dashboard and the alerts read (deploy/grafana/, deploy/prometheus/).
TRIP_OUTCOMES = (
    "requested",
    "accepted",
    "picked_up",
    "completed",
    "cancelled",
    "no_driver",
    "driver_lost",
)
TRIPS = Counter(
    "taxi_dispatcher_trips_total",
    "Trips that reached a state, counted once committed: requested, accepted, picked_up, "
    "completed, cancelled (by the rider), no_driver (nobody accepted in time), driver_lost.",
    ["outcome"],
)
OFFER_SECONDS = Histogram(
    "taxi_dispatcher_offer_seconds",
    "From a rider's request reaching the gateway to the request and its first offers "
    "published by the worker.",
    buckets=LATENCY_BUCKETS,
)
ASSIGN_SECONDS = Histogram(
    "taxi_dispatcher_assign_seconds",
    "From a driver's accept reaching the gateway to the rider and the other drivers "
    "being told, published by the worker.",
    buckets=LATENCY_BUCKETS,
)
QUEUE_MESSAGES = Gauge(
    "taxi_dispatcher_queue_messages",
    "Messages waiting in the shared queues, as this worker last looked (every few "
    "seconds): commands ({prefix}.dispatcher) and dead_letters ({prefix}.dead-letters).",
    ["queue"],
)
READY = Gauge(
    "taxi_dispatcher_ready",
    "1 while this worker is ready (database and broker reachable, consuming), else 0; "
    "updated every few seconds.",
)
for _outcome in TRIP_OUTCOMES:
    TRIPS.labels(_outcome)
for _queue in ("commands", "dead_letters"):
    QUEUE_MESSAGES.labels(_queue)

_OUTCOME_OF_STATUS = {
    Status.REQUESTED: "requested",
    Status.STARTED: "accepted",
    Status.IN_PROGRESS: "picked_up",
    Status.COMPLETED: "completed",
}


def trip_outcome(trip: Trip) -> str:
    """The `outcome` label of a trip as it now is: a cancel is told apart by its reason."""
    if trip.status is Status.CANCELLED:
        return trip.cancel_reason if trip.cancel_reason in TRIP_OUTCOMES else "cancelled"
    return _OUTCOME_OF_STATUS[trip.status]


def count_trips(trips: Iterable[Trip]) -> None:
    for trip in trips:
        TRIPS.labels(trip_outcome(trip)).inc()


def observe_latency(sent_at: float, trips: Iterable[Trip]) -> None:
    """How long a request took to be offered, or an accept to be told, from the moment
    the gateway received it (`sent_at`, the gateway's clock: keep the clocks in sync)."""
    waited = max(0.0, time.time() - sent_at)
    for trip in trips:
        if trip.status is Status.REQUESTED:
            OFFER_SECONDS.observe(waited)
        elif trip.status is Status.STARTED:
            ASSIGN_SECONDS.observe(waited)


def health_app(is_ready: Callable[[], Awaitable[dict[str, bool]]]) -> Starlette:
    """The worker's metrics app: /metrics, with /healthz and /readyz beside it."""

    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def readyz(request: Request) -> Response:
        checks = await is_ready()
        return JSONResponse(checks, status_code=200 if all(checks.values()) else 503)

    return metrics_app(Route("/healthz", healthz), Route("/readyz", readyz))
