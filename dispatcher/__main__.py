"""`python -m dispatcher`: run one dispatcher worker until SIGTERM or SIGINT."""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from dataclasses import replace

import uvloop

from dispatcher.worker import ServiceUnreachable, Worker
from shared import tracing
from shared.logs import configure_logging
from shared.metrics import MetricsPortUnavailable
from shared.settings import Settings, SettingsError


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m dispatcher", description=__doc__)
    parser.add_argument(
        "--concurrency", type=int, default=16, help="commands handled at once (default 16)"
    )
    parser.add_argument(
        "--prefetch", type=int, default=32, help="commands the broker may push ahead (default 32)"
    )
    parser.add_argument(
        "--metrics-port",
        type=int,
        default=None,
        help="serve /metrics, /healthz and /readyz on this port on TAXI_HOST "
        "(default: TAXI_METRICS_PORT + 1, the port after the gateway's; 0 turns it off)",
    )
    args = parser.parse_args(argv)
    if args.concurrency < 1 or args.prefetch < 1:
        parser.error("--concurrency and --prefetch must be at least 1")
    if args.metrics_port is not None and not 0 <= args.metrics_port < 65536:
        parser.error("--metrics-port must be between 0 and 65535")
    return args


def metrics_port(settings: Settings, args: argparse.Namespace) -> int:
    """--metrics-port, or else the port after the gateway's TAXI_METRICS_PORT."""
    return settings.metrics_port + 1 if args.metrics_port is None else int(args.metrics_port)


async def serve(settings: Settings, args: argparse.Namespace) -> None:
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopping.set)
    # The pool covers every command in flight plus the outbox relay, or handlers
    # would queue for connections.
    pool_size = max(settings.db_pool_size, args.concurrency + 1)
    worker = Worker(
        replace(settings, db_pool_size=pool_size),
        concurrency=args.concurrency,
        prefetch=args.prefetch,
        metrics_port=metrics_port(settings, args),
    )
    await worker.run(stopping)


def main() -> None:
    args = parse_args()
    try:
        settings = Settings.from_env()
    except SettingsError as exc:
        sys.exit(f"configuration error: {exc}")
    if metrics_port(settings, args) > 65535:
        sys.exit("dispatcher: TAXI_METRICS_PORT + 1 is beyond 65535: pass --metrics-port")
    configure_logging(settings.log_level, "dispatcher")
    try:
        tracing.configure("dispatcher")
    except tracing.TracingUnavailable as exc:
        sys.exit(f"dispatcher: {exc}")
    try:
        uvloop.run(serve(settings, args))
    except MetricsPortUnavailable as exc:
        how = "another --metrics-port" if args.metrics_port else "TAXI_METRICS_PORT"
        sys.exit(f"dispatcher: {exc} (set {how} to move it)")
    except ServiceUnreachable as exc:
        sys.exit(f"dispatcher: {exc}")


if __name__ == "__main__":
    main()
