"""The gateway's broker adapter against the real RabbitMQ: one queue of the gateway's
own for the notifications of the users connected to it, the offers broadcast, and
commands out. Nothing in the broker belongs to a user.

Each test's user has a random id no other test uses.
"""

from __future__ import annotations

import asyncio
import random
import uuid
from collections.abc import AsyncIterator

import aio_pika
import aiormq
import pytest
from aio_pika.abc import (
    AbstractChannel,
    AbstractConnection,
    AbstractExchange,
    AbstractQueueIterator,
)

from gateway.live.broker import GatewayBroker
from shared.broker import PublishFailed, declare_exchanges
from shared.settings import Settings
from shared.topology import DRIVER_OFFERS_KEY, Topology, command_key, user_key

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
def user_id() -> int:
    return 10**9 + random.randrange(10**9)


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


async def nothing_arrives(messages: AbstractQueueIterator, seconds: float = 0.5) -> bool:
    """True if no message comes within `seconds` (a negative check needs a deadline)."""
    try:
        async with asyncio.timeout(seconds):
            await anext(messages)
    except TimeoutError:
        return True
    return False


async def test_a_bound_users_notifications_reach_the_gateway_queue_and_offers_do_not(
    gateway: GatewayBroker, user_id: int, notifications: AbstractExchange
) -> None:
    own, offer = unique_body(), unique_body()
    messages = gateway.notifications()
    offers = gateway.offers()
    await gateway.bind_user(user_id)

    await publish(notifications, DRIVER_OFFERS_KEY, offer)
    await publish(notifications, user_key(user_id), own)

    # Offers come once per gateway, on their own subscription, not with notifications:
    # published first, the offer would otherwise arrive before the user's own.
    assert offer not in await receive(messages, own, ack=False)
    assert offer in await receive(offers, offer, ack=False)
    await messages.close()
    await offers.close()


async def test_an_unbound_users_notifications_do_not_reach_the_gateway(
    gateway: GatewayBroker, user_id: int, notifications: AbstractExchange
) -> None:
    messages = gateway.notifications()
    await gateway.bind_user(user_id)
    await gateway.unbind_user(user_id)

    await publish(notifications, user_key(user_id), unique_body())

    assert await nothing_arrives(messages)
    await messages.close()


async def test_two_gateways_each_get_the_notifications_of_a_user_connected_to_both(
    gateway: GatewayBroker, settings: Settings, user_id: int, notifications: AbstractExchange
) -> None:
    other = GatewayBroker(settings)
    await other.start()
    try:
        await gateway.bind_user(user_id)
        await other.bind_user(user_id)
        body = unique_body()
        await publish(notifications, user_key(user_id), body)
        assert body in await receive(gateway.notifications(), body, ack=False)
        assert body in await receive(other.notifications(), body, ack=False)
    finally:
        await other.close()


async def test_the_gateway_queue_goes_with_the_gateway_and_no_user_has_one(
    settings: Settings, user_id: int, amqp: AbstractConnection
) -> None:
    broker = GatewayBroker(settings)
    await broker.start()
    await broker.bind_user(user_id)
    name = Topology(settings.broker_prefix).gateway_queue(broker.gateway_id)
    channel = await amqp.channel()
    # It exists, and is the gateway's alone.
    with pytest.raises(aiormq.exceptions.ChannelLockedResource):
        await channel.declare_queue(name, passive=True)
    await broker.close()

    for gone in (name, f"{settings.broker_prefix}.user.{user_id}"):
        channel = await amqp.channel()
        with pytest.raises(aio_pika.exceptions.ChannelNotFoundEntity):
            await channel.declare_queue(gone, passive=True)


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


async def test_nothing_is_published_before_start(settings: Settings) -> None:
    broker = GatewayBroker(settings)

    assert broker.is_connected is False
    with pytest.raises(PublishFailed):
        await broker.publish_command("create.trip", b"{}", str(uuid.uuid4()))
    with pytest.raises(PublishFailed):
        broker.notifications()


async def test_publishing_on_a_closed_broker_fails(settings: Settings) -> None:
    broker = GatewayBroker(settings)
    await broker.start()
    assert broker.is_connected is True
    await broker.close()

    assert broker.is_connected is False
    with pytest.raises(PublishFailed):
        await broker.publish_command("create.trip", b"{}", str(uuid.uuid4()))
