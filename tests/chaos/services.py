"""Stopping and starting the machine's own Postgres and RabbitMQ, for fault tests.

Every stop is paired with a start in a `finally`, so a failing test still leaves
the services running for the tests after it.
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

SERVICE_TIMEOUT_SECONDS = 90


def _run(*command: str) -> None:
    result = subprocess.run(
        command, capture_output=True, text=True, timeout=SERVICE_TIMEOUT_SECONDS
    )
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed: {result.stdout}{result.stderr}")


def _port_open(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
        return True
    return False


def _wait_for_port(port: int, open_: bool) -> None:
    deadline = time.monotonic() + SERVICE_TIMEOUT_SECONDS
    while _port_open(port) != open_:
        if time.monotonic() > deadline:
            raise RuntimeError(f"port {port} did not become {'open' if open_ else 'closed'}")
        time.sleep(0.2)


def stop_rabbitmq() -> None:
    _run("rabbitmqctl", "stop_app")
    _wait_for_port(5672, open_=False)


def start_rabbitmq() -> None:
    _run("rabbitmqctl", "start_app")
    _run("rabbitmqctl", "await_startup")
    _wait_for_port(5672, open_=True)


def _postgres_version() -> str:
    versions = sorted(p.name for p in Path("/etc/postgresql").iterdir())
    return versions[-1]


def stop_postgres() -> None:
    _run(
        "pg_ctlcluster",
        "--skip-systemctl-redirect",
        _postgres_version(),
        "main",
        "stop",
        "-m",
        "fast",
    )
    _wait_for_port(5432, open_=False)


def start_postgres() -> None:
    _run("pg_ctlcluster", "--skip-systemctl-redirect", _postgres_version(), "main", "start")
    _wait_for_port(5432, open_=True)


@contextlib.contextmanager
def rabbitmq_stopped() -> Iterator[None]:
    stop_rabbitmq()
    try:
        yield
    finally:
        start_rabbitmq()


@contextlib.contextmanager
def postgres_stopped() -> Iterator[None]:
    stop_postgres()
    try:
        yield
    finally:
        start_postgres()
