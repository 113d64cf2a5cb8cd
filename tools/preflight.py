"""`python -m tools.preflight [--workers N]`: before `make run`, make sure Postgres and
RabbitMQ answer and the ports the system will listen on are free.

If a service does not answer and a Docker engine does, start both from
docker-compose.yml; otherwise say exactly what to install or start, and stop. A
port that is taken stops it with one line naming the port and the setting that
moves it.
"""

from __future__ import annotations

import argparse
import shutil
import socket
import subprocess
import sys
import time
from urllib.parse import urlsplit

from shared.settings import Settings, SettingsError, postgres_hosts

DEFAULT_PORTS = {"postgresql": 5432, "postgres": 5432, "amqp": 5672, "amqps": 5671}
COMPOSE_WAIT_SECONDS = 120

HOW_TO_START = """\
{missing} not reachable ({urls}).

Start the local services, or point TAXI_DATABASE_URL / TAXI_AMQP_URL at running ones:
  PostgreSQL:  sudo apt-get install postgresql            (Debian/Ubuntu)
               sudo pg_ctlcluster $(ls /etc/postgresql) main start
  RabbitMQ:    sudo apt-get install rabbitmq-server
               sudo rabbitmq-server -detached
Or install Docker and run `make run` again: it then starts both from docker-compose.yml.
"""


def reachable(url: str) -> bool:
    parts = urlsplit(url)
    port = parts.port or DEFAULT_PORTS.get(parts.scheme, 0)
    try:
        with socket.create_connection((parts.hostname or "127.0.0.1", port), timeout=2):
            return True
    except OSError:
        return False


def docker_engine_answers() -> bool:
    if shutil.which("docker") is None:
        return False
    probe = subprocess.run(["docker", "info"], capture_output=True, timeout=10, check=False)
    return probe.returncode == 0


def unreachable(settings: Settings) -> dict[str, list[str]]:
    """The services none of whose addresses answer (RabbitMQ may list several nodes)."""
    postgres = [
        f"postgresql://{f'[{host}]' if ':' in host else host}:{port}"
        for host, port in postgres_hosts(settings.database_url)
    ]
    services = {"PostgreSQL": postgres, "RabbitMQ": settings.amqp_urls}
    return {
        name: urls for name, urls in services.items() if not any(reachable(url) for url in urls)
    }


def port_taken(host: str, port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind((host, port))
        except OSError:
            return True
    return False


def wanted_ports(settings: Settings, workers: int) -> list[tuple[int, str, str]]:
    """(port, whose, the setting that moves it) for every port `make run` listens on:
    the gateway's public port, its metrics port and each worker's, the ports after it."""
    return [
        (settings.port, "the gateway's", "TAXI_PORT"),
        (settings.metrics_port, "the gateway's metrics", "TAXI_METRICS_PORT"),
    ] + [
        (settings.metrics_port + n, f"worker {n}'s metrics", "TAXI_METRICS_PORT")
        for n in range(1, workers + 1)
    ]


def taken_port(settings: Settings, workers: int) -> str | None:
    """One line about the first port the system needs that something else holds."""
    for port, whose, setting in wanted_ports(settings, workers):
        if port > 65535:
            return f"port {port} ({whose} port) is beyond 65535: set {setting} lower"
        if port_taken(settings.host, port):
            return (
                f"port {port} on {settings.host} ({whose} port) is taken: set {setting} to move it"
            )
    return None


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m tools.preflight", description=__doc__)
    parser.add_argument(
        "--workers",
        type=int,
        default=0,
        help="check the ports of the gateway and of this many dispatcher workers "
        "(without it, no port is checked)",
    )
    args = parser.parse_args()
    try:
        settings = Settings.from_env()
    except SettingsError as exc:
        sys.exit(f"configuration error: {exc}")
    if args.workers and (problem := taken_port(settings, args.workers)):
        sys.exit(problem)
    missing = unreachable(settings)
    if not missing:
        return
    if docker_engine_answers():
        print(f"{' and '.join(missing)} not reachable: starting them with docker compose")
        subprocess.run(["docker", "compose", "up", "--detach", "postgres", "rabbitmq"], check=True)
        deadline = time.monotonic() + COMPOSE_WAIT_SECONDS
        while (missing := unreachable(settings)) and time.monotonic() < deadline:
            time.sleep(1)
        if not missing:
            return
    hosts = ", ".join(
        f"{name} at {' or '.join(_where(url) for url in urls)}" for name, urls in missing.items()
    )
    sys.exit(HOW_TO_START.format(missing=" and ".join(missing), urls=hosts))


def _where(url: str) -> str:
    """host:port only: the URL may carry a password, which must not be printed."""
    parts = urlsplit(url)
    return f"{parts.hostname}:{parts.port or DEFAULT_PORTS.get(parts.scheme, '')}"


if __name__ == "__main__":
    main()
