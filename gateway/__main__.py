"""`python -m gateway`: serve the gateway with uvicorn, configured from the environment."""

from __future__ import annotations

import socket
import sys
from collections.abc import Awaitable, Callable
from types import FrameType

import uvicorn
from starlette.applications import Starlette

from gateway import processes
from gateway.app import create_app
from gateway.live import metrics
from gateway.live.socket_protocol import limited_protocol
from gateway.web.http_timeouts import bounded_http
from shared import tracing
from shared.logs import configure_logging
from shared.metrics import MetricsPortUnavailable, bind
from shared.settings import Settings, SettingsError


def main() -> None:
    try:
        settings = Settings.from_env()
    except SettingsError as exc:
        sys.exit(f"configuration error: {exc}")
    if settings.gateway_processes == 1:
        serve(settings)
        return
    configure_logging(settings.log_level, "gateway")
    if not processes.port_free(settings.host, settings.port):
        sys.exit(f"gateway: port {settings.port} is in use (set TAXI_PORT to move it)")
    sys.exit(processes.supervise(settings.gateway_processes, lambda n: serve(settings, n)))


def serve(settings: Settings, process: int = 0) -> None:
    """One gateway process: process n of several serves its metrics on the metrics
    port - n and shares the HTTP port with the others (`gateway.processes`)."""
    several = settings.gateway_processes > 1
    configure_logging(settings.log_level, f"gateway-{process}" if several else "gateway")
    try:
        tracing.configure("gateway")
    except tracing.TracingUnavailable as exc:
        sys.exit(f"gateway: {exc}")
    metrics_port = settings.metrics_port - process
    # Bound first, so that a port in use stops the gateway at once, in one line.
    try:
        metrics_listener = bind(settings.host, metrics_port)
    except MetricsPortUnavailable as exc:
        sys.exit(f"gateway: {exc} (set TAXI_METRICS_PORT to move it)")
    try:
        shared_port = (
            [processes.reuse_port_socket(settings.host, settings.port)] if several else None
        )
    except OSError as exc:
        sys.exit(f"gateway: cannot listen on port {settings.port}: {exc}")
    print(
        f"gateway{f' process {process}' if several else ''}: "
        f"HTTP on http://{settings.host}:{settings.port}/api/, "
        f"WebSocket on ws://{settings.host}:{settings.port}/taxi/?token=..., "
        f"metrics on http://{settings.host}:{metrics_port}/metrics",
        flush=True,
    )
    app = create_app(settings, metrics_listener)
    config = uvicorn_config(settings, app)
    GatewayServer(config, before_shutdown=app.state.close_sockets).run(sockets=shared_port)


def uvicorn_config(settings: Settings, app: Starlette) -> uvicorn.Config:
    """How the gateway runs `app` (the `servers` benchmark swaps in other `ws`
    implementations on this same configuration)."""
    return uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        loop="uvloop",
        # httptools, with deadlines for reading each request (gateway.web.http_timeouts).
        http=bounded_http(settings.http_read_seconds),
        # An idle connection after an answer; one that never sends a whole request
        # is cut off by the read deadlines.
        timeout_keep_alive=5,
        # websockets-sansio, with pings rate-limited and pongs bounded.
        ws=limited_protocol((settings.rate_limit_per_second, settings.rate_limit_burst)),
        ws_max_size=settings.max_frame_bytes,
        # Trip frames are small; compressing each one costs more CPU than it saves.
        ws_per_message_deflate=False,
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=10,
    )


class GatewayServer(uvicorn.Server):
    """uvicorn's server, but sockets close with 1001 (going away) on shutdown.

    uvicorn itself closes open WebSockets with 1012 (service restart); clients
    treat 1001 as the plain "server went away, reconnect" it is.
    """

    def __init__(
        self, config: uvicorn.Config, before_shutdown: Callable[[], Awaitable[None]]
    ) -> None:
        super().__init__(config)
        self._before_shutdown = before_shutdown

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        super().handle_exit(sig, frame)
        # uvicorn re-raises the signal once it has shut down, so the process dies
        # "by SIGTERM"; a graceful stop is a normal exit (status 0) for supervisors.
        self._captured_signals.clear()

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        # Only now does the HTTP port accept connections: the metrics port answers
        # from the app's start, and /readyz on a shared port reaches any process.
        metrics.SERVING.set(1 if self.started else 0)

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        metrics.SERVING.set(0)
        await self._before_shutdown()
        await super().shutdown(sockets)


if __name__ == "__main__":
    main()
