"""Fixtures shared by every test folder: one isolated database and broker prefix per run."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from pathlib import Path

import aio_pika
import asyncpg
import pytest

from shared.migrate import drop_database, migrate
from shared.settings import Settings
from shared.topology import Topology
from tests.services import service_urls, unique_name, with_database


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
        )
        try:
            yield run_settings
        finally:
            asyncio.run(delete_broker_objects(run_settings))
            drop_database(database_url)


async def delete_broker_objects(settings: Settings) -> None:
    """Delete every exchange and queue this run's prefix owns, user queues included."""
    topology = Topology(settings.broker_prefix)
    connection = await asyncpg.connect(settings.database_url)
    try:
        user_ids = [row["id"] for row in await connection.fetch("SELECT id FROM users")]
    finally:
        await connection.close()
    broker = await aio_pika.connect(settings.amqp_url)
    async with broker:
        queues = [*topology.shared_queues, *(topology.user_queue(i) for i in user_ids)]
        for name in queues:
            channel = await broker.channel()
            await channel.queue_delete(name)
        for name in topology.exchanges:
            channel = await broker.channel()
            await channel.exchange_delete(name)


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
