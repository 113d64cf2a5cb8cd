"""The gateway's side of the broker: publish commands, and open each user's inbox.

One connection per gateway process. Commands go out on a channel with publisher
confirms; all inboxes share one consuming channel (a channel per socket would cost
the broker memory for every idle user).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import aio_pika
from aio_pika.abc import (
    AbstractChannel,
    AbstractExchange,
    AbstractQueue,
    AbstractQueueIterator,
    AbstractRobustConnection,
)

from shared import broker
from shared.broker import PublishFailed
from shared.settings import Settings
from shared.topology import DRIVER_OFFERS_KEY, Topology, command_key, user_key
from shared.users import User

__all__ = ["GatewayBroker", "Inbox", "PublishFailed"]

# How many notifications the broker may push to one socket before it acknowledges any.
INBOX_PREFETCH = 64
# Offers waiting for this gateway at most; older ones are dropped first.
OFFERS_BACKLOG = 10_000


@dataclass
class Inbox:
    """A user's own notifications while their socket is open: their durable queue,
    each message acknowledged once written, so nothing in it is lost to a crash."""

    messages: AbstractQueueIterator
    # A driver busy with a trip gets no offers; notifications of their trip switch it.
    offers_paused: bool = False


class GatewayBroker:
    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self.topology = Topology(settings.broker_prefix)
        self._connection: AbstractRobustConnection | None = None
        self._commands: AbstractExchange | None = None
        self._notifications: AbstractExchange | None = None
        self._inbox_channel: AbstractChannel | None = None
        self._offers: AbstractQueue | None = None

    async def start(self) -> None:
        self._connection = await broker.connect(self._settings, "gateway")
        publish_channel = await self._connection.channel(
            publisher_confirms=True, on_return_raises=True
        )
        self._commands, self._notifications = await broker.declare_exchanges(
            publish_channel, self.topology
        )
        await broker.declare_dispatcher_queue(publish_channel, self.topology, self._commands)
        self._inbox_channel = await self._connection.channel(publisher_confirms=False)
        await self._inbox_channel.set_qos(prefetch_count=INBOX_PREFETCH)
        # One subscription to the offers broadcast per gateway, fanned out here to the
        # drivers connected to it: the broker delivers each offer once per gateway, not
        # once per driver. Exclusive: it lives and dies with this gateway's connection.
        self._offers = await self._inbox_channel.declare_queue(
            exclusive=True, auto_delete=True, arguments={"x-max-length": OFFERS_BACKLOG}
        )
        await self._offers.bind(self._notifications, DRIVER_OFFERS_KEY)

    def offers(self) -> AbstractQueueIterator:
        """The offers broadcast, unacknowledged: an offer is worth nothing a moment later."""
        if self._offers is None:
            raise PublishFailed("the gateway is not connected to the broker")
        return self._offers.iterator(no_ack=True)

    async def close(self) -> None:
        if self._connection is not None:
            await self._connection.close()
            self._connection = None

    @property
    def is_connected(self) -> bool:
        # A robust connection stays open while it reconnects; `connected` tells the truth.
        return self._connection is not None and self._connection.connected.is_set()

    async def publish_command(self, command_type: str, body: bytes, message_id: str) -> None:
        """Publish and wait for the broker's confirm; raise PublishFailed if it does not come."""
        if self._commands is None:
            raise PublishFailed("the gateway is not connected to the broker")
        message = aio_pika.Message(
            body,
            message_id=message_id,
            content_type="application/json",
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        )
        # Mandatory: a command that reaches no queue would be lost without a word.
        await broker.publish_confirmed(
            self._commands, message, command_key(command_type), mandatory=True
        )

    @asynccontextmanager
    async def inbox(self, user: User, *, offers: bool) -> AsyncIterator[Inbox]:
        """The user's queue, bound and consumed for as long as the context is open.

        `offers` False for a driver means they are busy: offers are not forwarded to
        them until a notification of their trip says they are free again.
        """
        if self._inbox_channel is None or self._notifications is None:
            raise PublishFailed("the gateway is not connected to the broker")
        queue = await self._inbox_channel.declare_queue(
            self.topology.user_queue(user.id),
            durable=True,
            arguments=broker.user_queue_arguments(self._settings),
        )
        await queue.bind(self._notifications, user_key(user.id))
        inbox = Inbox(queue.iterator(no_ack=False), offers_paused=not offers)
        # Consume now, in this task: the forwarder then only reads a local buffer, and
        # ending it never cancels a broker call halfway (aiormq closes the whole
        # shared channel when an RPC is cancelled).
        await inbox.messages.consume()
        try:
            yield inbox
        finally:
            await inbox.messages.close()
            _forget_for_restore(self._inbox_channel, queue)


def _forget_for_restore(channel: AbstractChannel, queue: AbstractQueue) -> None:
    """aio-pika's robust channel remembers every queue declared on it, to declare it
    again after a reconnect, and never lets go: one entry per connection ever made.
    A user's queue is declared afresh on their next connection, so forget this one."""
    remembered = getattr(channel, "_queues", {})
    same_name = remembered.get(queue.name)
    if same_name is not None:
        same_name.discard(queue)
        if not same_name:
            del remembered[queue.name]
