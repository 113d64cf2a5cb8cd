"""The gateway's broker adapter against the real RabbitMQ: users' inboxes and commands out.

Each test's user has a random id no other test uses, so its queue is its own; the
queues are deleted at the end (the session's clean-up only knows users in the database).
"""

from __future__ import annotations

import asyncio
import random
import uuid
from collections.abc import AsyncIterator

import aio_pika
import pytest
from aio_pika.abc import (
    AbstractChannel,
    AbstractConnection,
    AbstractExchange,
    AbstractQueueIterator,
)

from gateway.broker import GatewayBroker
from shared.broker import PublishFailed, declare_exchanges, user_queue_arguments
from shared.settings import Settings
from shared.topology import DRIVER_OFFERS_KEY, Topology, command_key, user_key
from shared.users import User

RECEIVE_SECONDS = 10


@pytest.fixture
async def gateway(settings: Settings) -> AsyncIterator[GatewayBroker]:
    broker = GatewayBroker(settings)
    await broker.start()
    try:
        yield broker
    finally:
        await broker.close()


@pytest.fixture
async def driver(amqp: AbstractConnection, settings: Settings) -> AsyncIterator[User]:
    user_id = 10**9 + random.randrange(10**9)
    yield User(user_id, f"driver{user_id}@example.com", "Dee", "Driver", "driver", None)
    channel = await amqp.channel()
    await channel.queue_delete(Topology(settings.broker_prefix).user_queue(user_id))


@pytest.fixture
async def notifications(amqp: AbstractConnection, settings: Settings) -> AbstractExchange:
    """The notifications exchange, as the dispatcher publishes to it (with confirms)."""
    channel = await amqp.channel(publisher_confirms=True)
    _, exchange = await declare_exchanges(channel, Topology(settings.broker_prefix))
    return exchange


def unique_body() -> bytes:
    return f'{{"type": "trip.requested", "event_id": "{uuid.uuid4()}", "data": {{}}}}'.encode()


async def publish(exchange: AbstractExchange, routing_key: str, body: bytes) -> None:
    """Publish and wait for the confirm: once this returns, the message is in its queues."""
    await exchange.publish(aio_pika.Message(body), routing_key, mandatory=False)


async def receive(messages: AbstractQueueIterator, *bodies: bytes, ack: bool = True) -> list[bytes]:
    """Read (and acknowledge, if asked) until every body arrived; return all it read.

    It may read more than this test published: offers are broadcast to every driver.
    """
    arrived: list[bytes] = []
    async with asyncio.timeout(RECEIVE_SECONDS):
        while not set(bodies) <= set(arrived):
            message = await anext(messages)
            if ack:
                await message.ack()
            arrived.append(message.body)
    return arrived


async def queued(amqp: AbstractConnection, settings: Settings, user: User) -> int:
    """How many messages wait in the user's queue (nobody consuming it)."""
    channel = await amqp.channel()
    queue = await channel.declare_queue(
        Topology(settings.broker_prefix).user_queue(user.id), passive=True
    )
    count = queue.declaration_result.message_count
    await channel.close()
    return count


async def test_a_users_queue_is_bounded(
    gateway: GatewayBroker, driver: User, amqp: AbstractConnection, settings: Settings
) -> None:
    expected = user_queue_arguments(settings)
    name = Topology(settings.broker_prefix).user_queue(driver.id)

    async with gateway.inbox(driver, offers=False):
        # Redeclaring with other arguments fails, so the queue has exactly these bounds.
        channel = await amqp.channel()
        await channel.declare_queue(name, durable=True, arguments=expected)
        for left_out in expected:
            channel = await amqp.channel()
            others = {key: value for key, value in expected.items() if key != left_out}
            with pytest.raises(aio_pika.exceptions.ChannelPreconditionFailed):
                await channel.declare_queue(name, durable=True, arguments=others)


async def test_a_drivers_own_notifications_and_offers_reach_their_inbox(
    gateway: GatewayBroker, driver: User, notifications: AbstractExchange
) -> None:
    own, offer = unique_body(), unique_body()

    offers = gateway.offers()
    async with gateway.inbox(driver, offers=True) as inbox:
        await publish(notifications, DRIVER_OFFERS_KEY, offer)
        await publish(notifications, user_key(driver.id), own)
        # Offers come once per gateway, on its own subscription, not in the user's queue:
        # published first, the offer would otherwise arrive before the driver's own.
        assert offer not in await receive(inbox.messages, own)
        assert offer in await receive(offers, offer, ack=False)
    await offers.close()


async def test_a_busy_driver_starts_with_offers_paused_and_a_free_one_without(
    gateway: GatewayBroker, driver: User
) -> None:
    # The gateway drops offers while paused; the queue itself stays bound.
    async with gateway.inbox(driver, offers=False) as busy:
        assert busy.offers_paused is True
    async with gateway.inbox(driver, offers=True) as free:
        assert free.offers_paused is False


async def test_a_riders_queue_never_receives_offers(
    gateway: GatewayBroker,
    notifications: AbstractExchange,
    amqp: AbstractConnection,
    settings: Settings,
) -> None:
    rider = User(
        id=10**9 + uuid.uuid4().int % 10**8,
        username="r@x",
        first_name="R",
        last_name="X",
        group="rider",
        photo=None,
    )
    async with gateway.inbox(rider, offers=False):
        pass
    try:
        waiting = await queued(amqp, settings, rider)
        await publish(notifications, DRIVER_OFFERS_KEY, unique_body())
        assert await queued(amqp, settings, rider) == waiting
        await publish(notifications, user_key(rider.id), unique_body())
        assert await queued(amqp, settings, rider) == waiting + 1
    finally:
        channel = await amqp.channel()
        await channel.queue_delete(Topology(settings.broker_prefix).user_queue(rider.id))


async def test_offers_stop_when_the_driver_leaves_but_their_notifications_wait(
    gateway: GatewayBroker,
    driver: User,
    notifications: AbstractExchange,
    amqp: AbstractConnection,
    settings: Settings,
) -> None:
    async with gateway.inbox(driver, offers=True):
        pass
    waiting = await queued(amqp, settings, driver)
    own = unique_body()

    await publish(notifications, DRIVER_OFFERS_KEY, unique_body())
    await publish(notifications, user_key(driver.id), own)

    assert await queued(amqp, settings, driver) == waiting + 1
    async with gateway.inbox(driver, offers=False) as inbox:
        assert own in await receive(inbox.messages, own)


async def test_a_command_is_published_with_its_id_and_confirmed(
    gateway: GatewayBroker, amqp: AbstractConnection, settings: Settings
) -> None:
    # The dispatcher queue is shared with the e2e workers; a queue of our own bound to
    # this test's routing key receives a copy of the command to look at.
    command_type = f"probe-{uuid.uuid4().hex}"
    channel: AbstractChannel = await amqp.channel()
    copy = await channel.declare_queue(exclusive=True)
    await copy.bind(Topology(settings.broker_prefix).commands_exchange, command_key(command_type))
    message_id = str(uuid.uuid4())
    # Not a command any worker can decode, so a worker that takes it dead-letters it.
    body = b'{"probe": "gateway broker test"}'

    try:
        await gateway.publish_command(command_type, body, message_id)
        message = await copy.get(no_ack=True, fail=False)
    finally:
        await copy.delete(if_unused=False, if_empty=False)

    assert message is not None
    assert message.body == body
    assert message.message_id == message_id
    assert message.content_type == "application/json"
    assert message.delivery_mode == aio_pika.DeliveryMode.PERSISTENT
    assert message.routing_key == command_key(command_type)


async def test_nothing_is_published_before_start(settings: Settings, driver: User) -> None:
    broker = GatewayBroker(settings)

    assert broker.is_connected is False
    with pytest.raises(PublishFailed):
        await broker.publish_command("create.trip", b"{}", str(uuid.uuid4()))
    with pytest.raises(PublishFailed):
        async with broker.inbox(driver, offers=True):
            pass


async def test_publishing_on_a_closed_broker_fails(settings: Settings) -> None:
    broker = GatewayBroker(settings)
    await broker.start()
    assert broker.is_connected is True
    await broker.close()

    assert broker.is_connected is False
    with pytest.raises(PublishFailed):
        await broker.publish_command("create.trip", b"{}", str(uuid.uuid4()))
