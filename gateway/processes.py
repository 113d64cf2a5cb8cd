"""Several gateway processes on one host (TAXI_GATEWAY_PROCESSES), so that the
gateway uses more than one core.

Each process is a whole gateway: its own broker queue and connection, its own
sockets, its own metrics port (TAXI_METRICS_PORT - n for process n). They share the
HTTP port: each binds it with SO_REUSEPORT and the kernel spreads new connections
between them. Nothing else is shared, and nothing else needs to be: a user's sockets
on two processes are a user's sockets on two gateways, which the system handles
already (notifications go to every gateway a user is connected to; the socket cap
counts across gateways).

The parent only supervises: it starts the processes, passes a stop on to them and
waits for them to finish, and starts again a process that died after running a
while. One that dies at start-up (its port taken, a service unreachable) stops them
all, with the reason in its log line: starting it again would fail the same way.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import socket
import time
from collections.abc import Callable
from multiprocessing.connection import wait
from multiprocessing.context import ForkProcess
from types import FrameType
from typing import Any

log = logging.getLogger(__name__)

# A process that ends sooner than this after its start failed to start.
START_SECONDS = 5


def reuse_port_socket(host: str, port: int) -> socket.socket:
    """The HTTP port, bound so that the other gateway processes can bind it too."""
    listener, address = _unbound(host, port)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    listener.bind(address)
    return listener


def port_free(host: str, port: int) -> bool:
    """Whether nothing listens on the port: SO_REUSEPORT would let a stale gateway of the
    same user share it silently, so the parent checks with a plain bind first."""
    probe, address = _unbound(host, port)
    with probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError:
            return False
    return True


def _unbound(host: str, port: int) -> tuple[socket.socket, tuple[Any, ...]]:
    """A TCP socket of the family `host` resolves to, and the address to bind it to."""
    family, kind, protocol, _, address = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    return socket.socket(family, kind, protocol), address


def supervise(count: int, serve: Callable[[int], None]) -> int:
    """Run `serve(n)` in `count` processes until told to stop; the exit status."""
    context = multiprocessing.get_context("fork")
    running: dict[int, tuple[ForkProcess, float]] = {}
    stopping = False
    status = 0

    def start(index: int) -> None:
        process = context.Process(target=_own_group, args=(serve, index), name=f"gateway-{index}")
        process.start()
        running[index] = (process, time.monotonic())

    def stop(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        if not stopping:
            log.info("gateway processes stopping count=%d", len(running))
        stopping = True
        for process, _ in running.values():
            if process.is_alive() and process.pid is not None:
                os.kill(process.pid, signal.SIGTERM)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    for index in range(count):
        start(index)
    while running:
        wait([process.sentinel for process, _ in running.values()])
        for index, (process, started) in list(running.items()):
            if process.is_alive():
                continue
            process.join()
            del running[index]
            if stopping:
                status = status or (1 if process.exitcode else 0)
            elif time.monotonic() - started < START_SECONDS:
                log.error(
                    "gateway process %d failed to start (status %s); stopping the others",
                    index,
                    process.exitcode,
                )
                status = 1
                stop(signal.SIGTERM, None)
            else:
                log.warning(
                    "gateway process %d ended (status %s); starting it again",
                    index,
                    process.exitcode,
                )
                start(index)
    return status


def _own_group(serve: Callable[[int], None], index: int) -> None:
    """A process of its own group: Ctrl-C reaches the parent alone, which passes one
    stop on (two would make uvicorn skip closing the sockets)."""
    os.setpgrp()
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    serve(index)
