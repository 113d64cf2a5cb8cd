"""The dispatcher's Prometheus metrics, and the app each worker serves them from with
its health checks (`--metrics-port`)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from prometheus_client import Counter, Gauge, Histogram
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

# The embedded server itself lives in shared.metrics, for the gateway and the workers
# alike; the worker finds it here.
from shared.metrics import metrics_app

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
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
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


def health_app(is_ready: Callable[[], Awaitable[dict[str, bool]]]) -> Starlette:
    """The worker's metrics app: /metrics, with /healthz and /readyz beside it."""

    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def readyz(request: Request) -> Response:
        checks = await is_ready()
        return JSONResponse(checks, status_code=200 if all(checks.values()) else 503)

    return metrics_app(Route("/healthz", healthz), Route("/readyz", readyz))
