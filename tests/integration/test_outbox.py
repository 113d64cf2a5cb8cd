"""The outbox: notifications stored with a change, and the relay that publishes leftovers.

Other tests (and the e2e dispatchers' own relays) share this run's outbox table, so
every assertion here is about this test's own rows and its own queue.
"""

from __future__ import annotations

import asyncio
import random
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from datetime import UTC, datetime, timedelta

import aio_pika
import orjson
import pytest
from aio_pika.abc import AbstractConnection, AbstractIncomingMessage, AbstractQueue

from dispatcher import notification_log, outbox
from dispatcher.notifications import Notification
from dispatcher.outbox import OutboxRelay
from dispatcher.publisher import NotificationPublisher
from shared.broker import declare_exchanges
from shared.db import Database
from shared.settings import Settings
from shared.topology import EXCLUDE_USER_HEADER, Topology, user_key


@pytest.fixture
async def database(settings: Settings) -> AsyncIterator[Database]:
    database = Database(settings)
    await database.start()
    try:
        yield database
    finally:
        await database.close()


@pytest.fixture
async def relay(database: Database, amqp: AbstractConnection, settings: Settings) -> OutboxRelay:
    channel = await amqp.channel(publisher_confirms=True)
    _, notifications = await declare_exchanges(channel, Topology(settings.broker_prefix))
    return OutboxRelay(database, NotificationPublisher(notifications))


@pytest.fixture
def routing_key() -> str:
    """A key nobody else publishes to: the notifications of a user who does not exist."""
    return user_key(10**12 + random.randrange(10**9))


@pytest.fixture
async def queue(
    amqp: AbstractConnection, settings: Settings, relay: OutboxRelay, routing_key: str
) -> AsyncIterator[AbstractQueue]:
    channel = await amqp.channel()
    queue = await channel.declare_queue(exclusive=True)
    await queue.bind(Topology(settings.broker_prefix).notifications_exchange, routing_key)
    try:
        yield queue
    finally:
        await queue.delete(if_unused=False, if_empty=False)


def frame_body() -> bytes:
    return orjson.dumps({"type": "trip.accepted", "event_id": str(uuid.uuid4()), "data": {}})


async def store_committed(
    database: Database,
    notifications: Sequence[Notification],
    *,
    stored_ago: timedelta,
    exchange: str,
    left_behind: bool = True,
) -> list[int]:
    """Store as a worker would, `stored_ago` in the past; left behind rows are a minute old."""
    async with database.pool.acquire() as conn, conn.transaction():
        now = await conn.fetchval("SELECT now()")
        recorded = await notification_log.record(
            conn, notifications, now - stored_ago, exchange=exchange
        )
        ids = recorded.outbox_ids
        if left_behind:
            await conn.execute(
                "UPDATE outbox SET created = now() - interval '1 minute' WHERE id = ANY($1)",
                ids,
            )
    return ids


async def remaining(database: Database, ids: Sequence[int]) -> set[int]:
    rows = await database.pool.fetch("SELECT id FROM outbox WHERE id = ANY($1)", ids)
    return {row["id"] for row in rows}


async def wait_until(condition: Callable[[], Awaitable[bool]], within: float = 10) -> None:
    deadline = asyncio.get_running_loop().time() + within
    while not await condition():
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)


async def relay_until_gone(relay: OutboxRelay, database: Database, ids: Sequence[int]) -> None:
    """Run the relay until our rows are gone (another relay may hold them for a moment)."""

    async def gone() -> bool:
        await relay.relay_once()
        return not await remaining(database, ids)

    await wait_until(gone)


async def drain(queue: AbstractQueue) -> list[AbstractIncomingMessage]:
    """Every message in the queue now; the relay deletes a row only after its confirm."""
    messages = []
    while (message := await queue.get(no_ack=True, fail=False)) is not None:
        messages.append(message)
    return messages


async def test_a_left_behind_notification_is_published_and_removed(
    relay: OutboxRelay, database: Database, queue: AbstractQueue, routing_key: str
) -> None:
    body = frame_body()
    ids = await store_committed(
        database,
        [Notification(routing_key, body, headers={EXCLUDE_USER_HEADER: "3"})],
        exchange=relay.exchange,
        stored_ago=timedelta(0),
    )

    await relay_until_gone(relay, database, ids)

    [message] = await drain(queue)
    assert message.body == body
    assert message.headers == {EXCLUDE_USER_HEADER: "3"}
    assert message.content_type == "application/json"
    assert message.delivery_mode == aio_pika.DeliveryMode.PERSISTENT
    assert message.expiration is None


async def test_the_relay_publishes_in_the_order_the_notifications_were_stored(
    relay: OutboxRelay, database: Database, queue: AbstractQueue, routing_key: str
) -> None:
    bodies = [frame_body() for _ in range(20)]
    ids = await store_committed(
        database,
        [Notification(routing_key, body) for body in bodies],
        exchange=relay.exchange,
        stored_ago=timedelta(0),
    )

    await relay_until_gone(relay, database, ids)

    # A user's notifications mean something in order: accepted, then picked up.
    assert [message.body for message in await drain(queue)] == bodies


async def test_a_left_behind_offer_keeps_its_original_expiry(
    relay: OutboxRelay, database: Database, queue: AbstractQueue, routing_key: str
) -> None:
    # Stored four minutes ago with ten minutes to live: six minutes are left.
    ids = await store_committed(
        database,
        [Notification(routing_key, frame_body(), ttl_seconds=600)],
        exchange=relay.exchange,
        stored_ago=timedelta(minutes=4),
    )

    await relay_until_gone(relay, database, ids)

    [message] = await drain(queue)
    assert message.expiration is not None
    assert 330 <= message.expiration <= 360
    assert message.delivery_mode == aio_pika.DeliveryMode.NOT_PERSISTENT


async def test_an_expired_notification_is_deleted_without_being_published(
    relay: OutboxRelay, database: Database, queue: AbstractQueue, routing_key: str
) -> None:
    expired_body, live_body = frame_body(), frame_body()
    expired = await store_committed(
        database,
        [Notification(routing_key, expired_body, ttl_seconds=30)],
        exchange=relay.exchange,
        stored_ago=timedelta(minutes=1),
    )
    live = await store_committed(
        database,
        [Notification(routing_key, live_body)],
        exchange=relay.exchange,
        stored_ago=timedelta(0),
    )

    await relay_until_gone(relay, database, [*expired, *live])

    assert [message.body for message in await drain(queue)] == [live_body]


async def test_a_fresh_notification_is_left_to_the_worker_that_stored_it(
    relay: OutboxRelay, database: Database, queue: AbstractQueue, routing_key: str
) -> None:
    ids = await store_committed(
        database,
        [Notification(routing_key, frame_body())],
        exchange=relay.exchange,
        stored_ago=timedelta(0),
        left_behind=False,
    )
    try:
        await relay.relay_once()

        assert await remaining(database, ids) == set(ids)
        assert await drain(queue) == []
    finally:
        await outbox.delete(database, ids)


async def test_store_keeps_the_notification_as_given(database: Database, routing_key: str) -> None:
    body = frame_body()
    async with database.pool.acquire() as conn, conn.transaction():
        now = await conn.fetchval("SELECT now()")
        recorded = await notification_log.record(
            conn,
            [
                Notification(routing_key, body, headers={EXCLUDE_USER_HEADER: "3"}),
                Notification("drivers.offers", body, ttl_seconds=30),
            ],
            now,
            exchange="test-exchange",
        )
        ids = recorded.outbox_ids
        rows = await conn.fetch(
            "SELECT routing_key, body, headers, expires FROM outbox WHERE id = ANY($1) ORDER BY id",
            ids,
        )
        # Nothing of this test's rows may outlive it.
        await conn.execute("DELETE FROM outbox WHERE id = ANY($1)", ids)

    assert len(ids) == 2
    assert [
        (row["routing_key"], bytes(row["body"]), orjson.loads(row["headers"]), row["expires"])
        for row in rows
    ] == [
        (routing_key, body, {EXCLUDE_USER_HEADER: "3"}, None),
        ("drivers.offers", body, {}, now + timedelta(seconds=30)),
    ]


async def test_notifications_stored_in_a_rolled_back_transaction_are_gone(
    database: Database, routing_key: str
) -> None:
    ids: list[int] = []

    class Abandon(Exception):
        pass

    with pytest.raises(Abandon):
        async with database.pool.acquire() as conn, conn.transaction():
            recorded = await notification_log.record(
                conn,
                [Notification(routing_key, frame_body())],
                datetime.now(UTC),
                exchange="test-exchange",
            )
            ids = recorded.outbox_ids
            raise Abandon

    assert ids
    assert await remaining(database, ids) == set()


async def test_published_rows_of_many_commands_go_in_one_delete_and_a_failed_one_is_retried(
    relay: OutboxRelay, database: Database, routing_key: str
) -> None:
    first = await store_committed(
        database,
        [Notification(routing_key, frame_body())],
        exchange=relay.exchange,
        stored_ago=timedelta(0),
        left_behind=False,
    )
    second = await store_committed(
        database,
        [Notification(routing_key, frame_body())],
        exchange=relay.exchange,
        stored_ago=timedelta(0),
        left_behind=False,
    )
    published = outbox.Published(database)
    published.add(first)
    published.add(second)
    await database.close()
    with pytest.raises(RuntimeError):  # the database is not started: nothing deleted
        await published.flush()
    await database.start()
    assert await remaining(database, first + second) == set(first + second)

    await published.flush()

    assert await remaining(database, first + second) == set()
