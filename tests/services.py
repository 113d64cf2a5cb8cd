"""Where the tests find Postgres and RabbitMQ, and how each run isolates itself.

With a Docker engine, testcontainers starts both. Without one, the tests use
TAXI_TEST_DATABASE_URL and TAXI_TEST_AMQP_URL, defaulting to the local services.
A service that cannot be reached fails the run: it is never a reason to skip.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass

DEFAULT_DATABASE_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
DEFAULT_AMQP_URL = "amqp://guest:guest@127.0.0.1:5672/"


@dataclass(frozen=True)
class ServiceUrls:
    database_server: str
    amqp: str


def docker_engine_available() -> bool:
    try:
        import docker

        docker.from_env(timeout=3).ping()
    except Exception:
        return False
    return True


@contextlib.contextmanager
def service_urls() -> Iterator[ServiceUrls]:
    if docker_engine_available():
        from testcontainers.postgres import PostgresContainer
        from testcontainers.rabbitmq import RabbitMqContainer

        with (
            PostgresContainer("postgres:16-alpine", driver=None) as postgres,
            RabbitMqContainer("rabbitmq:3.13-alpine") as rabbitmq,
        ):
            params = rabbitmq.get_connection_params()
            yield ServiceUrls(
                database_server=postgres.get_connection_url(),
                amqp=f"amqp://guest:guest@{params.host}:{params.port}/",
            )
        return
    yield ServiceUrls(
        database_server=os.environ.get("TAXI_TEST_DATABASE_URL", DEFAULT_DATABASE_URL),
        amqp=os.environ.get("TAXI_TEST_AMQP_URL", DEFAULT_AMQP_URL),
    )
