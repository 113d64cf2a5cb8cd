"""Serving Prometheus metrics over HTTP, for the gateway and the workers alike.

Each process serves them on a port of its own, never on the gateway's public one:
the gateway on TAXI_METRICS_PORT, each worker on its `--metrics-port`. The server is
a small uvicorn inside the process's own event loop, on a listener bound before
anything else starts, so a port in use stops the process at once with one line.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Generator

import uvicorn
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from shared.logs import embedded_server

METRICS_PATH = "/metrics"


async def metrics_endpoint(request: Request) -> Response:
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)


def metrics_app(*routes: BaseRoute) -> Starlette:
    """An app serving /metrics, and the given routes beside it (a worker's health checks)."""
    return Starlette(routes=[*routes, Route(METRICS_PATH, metrics_endpoint)])


class MetricsPortUnavailable(Exception):
    pass


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


class EmbeddedServer(uvicorn.Server):
    """A uvicorn server running inside the process's loop; the process owns the signals."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield

    async def serve(self, sockets: list[socket.socket] | None = None) -> None:
        # Its task's own context: the process's other uvicorn is unaffected.
        embedded_server.set(True)
        await super().serve(sockets)


def metrics_server(app: Starlette, host: str, port: int) -> EmbeddedServer:
    config = uvicorn.Config(
        app, host=host, port=port, log_config=None, access_log=False, lifespan="off"
    )
    return EmbeddedServer(config)


@contextlib.asynccontextmanager
async def serving(app: Starlette, listener: socket.socket) -> AsyncIterator[None]:
    """Serve `app` on the bound `listener` for as long as the block runs."""
    host, port = listener.getsockname()[:2]
    server = metrics_server(app, host, port)
    task = asyncio.create_task(server.serve([listener]))
    try:
        yield
    finally:
        server.should_exit = True
        await task
