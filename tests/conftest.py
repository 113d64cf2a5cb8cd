"""Fixtures shared by every test folder: one isolated database and broker prefix per run."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from pathlib import Path

import aio_pika
import asyncpg
import httpx
import pytest

from shared.migrate import drop_database, migrate, with_database
from shared.settings import Settings
from tests.chaos.services import PrivatePostgres, PrivateRabbitMQ, shared_server_identities
from tests.services import docker_engine_available, service_urls
from tools.cleanup import delete_broker_objects, unique_name
from tools.processes import ServiceProcess, start_dispatcher, start_gateway


@pytest.fixture(scope="session")
def settings(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    """Settings of this test run: its own database (migrated) and its own broker prefix."""
    with service_urls() as urls:
        database_url = with_database(urls.database_server, unique_name("test"))
        migrate(database_url)
        run_settings = replace(
            Settings(),
            env="test",
            database_url=database_url,
            amqp_url=urls.amqp,
            broker_prefix=unique_name("test").replace("_", "-"),
            media_dir=str(tmp_path_factory.mktemp("media")),
            log_level="DEBUG",
            # Thousands of sign-ups in a run; the standard profile has tests of its own.
            password_hashing="fast",
            # Races and bursts in the tests outpace a person's tapping; the limit itself
            # is tested on gateways of its own (tests/e2e/test_limits.py).
            rate_limit_per_second=200,
            rate_limit_burst=400,
            # Every test signs up and logs in from 127.0.0.1; the throttles are tested
            # on gateways of their own (tests/e2e/test_http_abuse.py).
            login_attempts=1_000_000,
            signup_attempts=1_000_000,
            # A run starts dozens of gateways and workers beside one another on one
            # Postgres (100 connections by default): small pools keep them all under it.
            db_pool_size=4,
        )
        try:
            yield run_settings
        finally:
            asyncio.run(delete_broker_objects(run_settings))
            drop_database(database_url)


@pytest.fixture
async def db(settings: Settings) -> AsyncIterator[asyncpg.Connection]:
    connection = await asyncpg.connect(settings.database_url)
    yield connection
    await connection.close()


@pytest.fixture
async def amqp(settings: Settings) -> AsyncIterator[aio_pika.abc.AbstractConnection]:
    connection = await aio_pika.connect(settings.amqp_url)
    async with connection:
        yield connection


@pytest.fixture(scope="session")
def project_root() -> Path:
    return Path(__file__).resolve().parent.parent


@pytest.fixture
def isolated_settings(settings: Settings, request: pytest.FixtureRequest) -> Iterator[Settings]:
    """The run's database, but a broker prefix of the test's own: for tests that start,
    kill and restart their own gateway and workers without touching anyone else's."""
    isolated = replace(
        settings,
        broker_prefix=f"{settings.broker_prefix}-{request.node.name[:20]}".replace("_", "-"),
        log_level="INFO",
    )
    yield isolated
    asyncio.run(delete_broker_objects(isolated))


# The running system most end-to-end and browser tests share: one real gateway
# process and two real dispatcher workers on this run's database and prefix.


@pytest.fixture(scope="session")
def log_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("logs")


@pytest.fixture(scope="session")
def gateway_process(settings: Settings, log_dir: Path) -> Iterator[tuple[ServiceProcess, str]]:
    process, base_url = start_gateway(settings, log_dir)
    yield process, base_url
    process.stop()


@pytest.fixture(scope="session")
def base_url(gateway_process: tuple[ServiceProcess, str]) -> str:
    return gateway_process[1]


@pytest.fixture
async def http(base_url: str) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=base_url, timeout=10) as client:
        yield client


@pytest.fixture(scope="session")
def dispatchers(settings: Settings, log_dir: Path) -> Iterator[list[ServiceProcess]]:
    """Two competing dispatcher workers, as operators run them."""
    workers = [
        start_dispatcher(settings, log_dir / f"dispatcher-{n}.log", "--concurrency", "8")
        for n in range(2)
    ]
    yield workers
    for worker in workers:
        assert worker.stop() == 0, worker.log()


# Fault tests that stop, kill or restart Postgres or RabbitMQ do it to private servers
# the session starts and removes itself (tests/chaos/services.py), never to the
# machine's shared ones, which must keep running untouched through a whole run.


@pytest.fixture(scope="session", autouse=True)
def shared_services_left_alone() -> Iterator[None]:
    """Fail the run if the shared Postgres's or RabbitMQ's server process changed
    (stopped, restarted, killed) between its start and its end. Only reads."""
    if docker_engine_available():  # the run's services are containers of its own
        yield
        return
    with service_urls() as urls:
        before = shared_server_identities(urls.database_server, urls.amqp)
        yield
        after = shared_server_identities(urls.database_server, urls.amqp)
    changed = [
        f"{name}: was {was}; now {after[name] or 'not running'}"
        for name, was in before.items()
        if was is not None and after[name] != was
    ]
    if changed:
        pytest.fail(
            "the run stopped or restarted a shared service:\n" + "\n".join(changed), pytrace=False
        )


@pytest.fixture(scope="session")
def private_postgres() -> Iterator[PrivatePostgres]:
    with PrivatePostgres() as postgres:
        yield postgres


@pytest.fixture(scope="session")
def private_rabbitmq() -> Iterator[PrivateRabbitMQ]:
    with PrivateRabbitMQ() as rabbitmq:
        yield rabbitmq


@pytest.fixture(scope="session")
def private_database(private_postgres: PrivatePostgres) -> str:
    database_url = private_postgres.url(unique_name("test"))
    migrate(database_url)
    return database_url


@pytest.fixture
def private_settings(
    settings: Settings, private_database: str, private_rabbitmq: PrivateRabbitMQ
) -> Iterator[Settings]:
    """The run's settings on the private servers, with a broker prefix of the test's own:
    for tests that stop the database or the broker under their own gateway and workers."""
    private = replace(
        settings,
        database_url=private_database,
        amqp_url=private_rabbitmq.url,
        broker_prefix=unique_name("private").replace("_", "-"),
        log_level="INFO",
    )
    yield private
    asyncio.run(delete_broker_objects(private))
