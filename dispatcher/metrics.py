"""The dispatcher's Prometheus metrics, and the small HTTP server each worker runs
for them and for its health checks (`--metrics-port`)."""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Awaitable, Callable, Generator

import uvicorn
from prometheus_client import Counter, Gauge, Histogram
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from shared.metrics import metrics_endpoint

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
    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def readyz(request: Request) -> Response:
        checks = await is_ready()
        return JSONResponse(checks, status_code=200 if all(checks.values()) else 503)

    return Starlette(
        routes=[
            Route("/healthz", healthz),
            Route("/readyz", readyz),
            Route("/metrics", metrics_endpoint),
        ]
    )


class EmbeddedServer(uvicorn.Server):
    """A uvicorn server running inside the worker's loop; the worker owns the signals."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


def bind(host: str, port: int) -> socket.socket:
    """The metrics listener; raises MetricsPortUnavailable if the port cannot be had."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        listener.bind((host, port))
    except OSError as exc:
        listener.close()
        raise MetricsPortUnavailable(
            f"cannot serve metrics on {host}:{port}: {exc.strerror}"
        ) from None
    listener.listen(64)
    return listener


class MetricsPortUnavailable(Exception):
    pass


def metrics_server(app: Starlette, host: str, port: int) -> EmbeddedServer:
    config = uvicorn.Config(
        app, host=host, port=port, log_config=None, access_log=False, lifespan="off"
    )
    return EmbeddedServer(config)
