"""The gateway's side of the broker: publish commands, and receive what the users
connected here are sent.

One connection per gateway process. Commands go out on a channel with publisher
confirms. Notifications arrive on one queue of this gateway's own, bound to
`user.<id>` for each user connected here and unbound when their last socket here
closes (offers to a driver by name come that way too); broadcast offers on a second
one. Drivers' locations go out to the workers on a channel without confirms: one
lost is replaced by the next. Both live and die
with the gateway's connection: nothing in the broker waits for a user who is away
(Postgres keeps their notifications), so the broker's cost follows the sockets
open now, not the users who ever connected.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

import aio_pika
import orjson
from aio_pika.abc import (
    AbstractChannel,
    AbstractExchange,
    AbstractQueue,
    AbstractQueueIterator,
    AbstractRobustConnection,
)
from opentelemetry.trace import SpanKind

from shared import broker, tracing
from shared.broker import PublishFailed
from shared.locations import DRIVER_LOCATION
from shared.settings import Settings
from shared.topology import (
    DRIVER_OFFERS_KEY,
    LOCATIONS_WANTED_KEY,
    SOCKETS_REPLACED,
    TRIP_HEADER,
    Topology,
    command_key,
    user_key,
)

__all__ = ["GatewayBroker", "PublishFailed"]

# Offers waiting for this gateway at most; older ones are dropped first.
OFFERS_BACKLOG = 10_000
# A driver's location that no gateway took within this long is dropped.
LIVE_LOCATION_TTL_SECONDS = 5


class GatewayBroker:
    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self.topology = Topology(settings.broker_prefix)
        self._connection: AbstractRobustConnection | None = None
        self._commands: AbstractExchange | None = None
        self._notifications: AbstractExchange | None = None
        self._locations: AbstractExchange | None = None
        # The notifications exchange again, on the channel without confirms: for the
        # drivers' live locations, worth nothing a moment later.
        self._live: AbstractExchange | None = None
        self._inbox_channel: AbstractChannel | None = None
        self._offers: AbstractQueue | None = None
        self._notifications_queue: AbstractQueue | None = None
        # Names this gateway's own queue; a restarted gateway gets a new one.
        self.gateway_id = uuid.uuid4().hex[:12]

    def on_reconnect(self, callback: Callable[[], object]) -> None:
        """Call `callback` each time the connection to the broker is back after a loss."""
        assert self._connection is not None
        self._connection.reconnect_callbacks.add(lambda *_: callback())

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
        self._locations = await broker.declare_locations_exchange(
            self._inbox_channel, self.topology
        )
        _, self._live = await broker.declare_exchanges(self._inbox_channel, self.topology)
        # One subscription to the offers broadcast per gateway, fanned out here to the
        # drivers connected to it: the broker delivers each offer once per gateway, not
        # once per driver. Declared first, so that after a reconnect aio-pika restores it
        # before the notifications queue and its binding per connected user: offers,
        # which nothing replays, flow again at once.
        self._offers = await self._inbox_channel.declare_queue(
            exclusive=True, auto_delete=True, arguments={"x-max-length": OFFERS_BACKLOG}
        )
        await self._offers.bind(self._notifications, DRIVER_OFFERS_KEY)
        # Exclusive: it lives and dies with this gateway's connection, and after a
        # reconnect aio-pika declares it again with the bindings of the users here.
        self._notifications_queue = await self._inbox_channel.declare_queue(
            self.topology.gateway_queue(self.gateway_id),
            exclusive=True,
            arguments=broker.gateway_queue_arguments(),
        )
        await self._notifications_queue.bind(self._notifications, LOCATIONS_WANTED_KEY)

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
        key = command_key(command_type)
        if tracing.enabled:
            with tracing.span(
                f"{key} publish", SpanKind.PRODUCER, attributes={"messaging.message.id": message_id}
            ):
                headers: dict[str, Any] = {}
                tracing.inject(headers)
                await self._publish_command(key, body, message_id, headers)
            return
        await self._publish_command(key, body, message_id)

    async def _publish_command(
        self, key: str, body: bytes, message_id: str, headers: dict[str, Any] | None = None
    ) -> None:
        assert self._commands is not None
        message = aio_pika.Message(
            body,
            message_id=message_id,
            content_type="application/json",
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            headers=headers,
        )
        # Mandatory: a command that reaches no queue would be lost without a word.
        await broker.publish_confirmed(self._commands, message, key, mandatory=True)

    async def publish_location(self, body: bytes) -> None:
        """A driver's report to every worker: unconfirmed, and never written to disk."""
        if self._locations is None:
            raise PublishFailed("the gateway is not connected to the broker")
        message = aio_pika.Message(body, delivery_mode=aio_pika.DeliveryMode.NOT_PERSISTENT)
        # Not mandatory: with no worker running, a batch (or a heartbeat) simply goes
        # nowhere, rather than coming back to be logged as an unhandled return.
        await self._locations.publish(message, "", mandatory=False)

    async def publish_live_location(self, rider_id: int, trip_id: str, body: bytes) -> None:
        """A driver's location to the rider of their trip: unconfirmed, never on disk,
        and gone after a few seconds if no gateway takes it sooner."""
        if self._live is None:
            raise PublishFailed("the gateway is not connected to the broker")
        message = aio_pika.Message(
            body,
            type=DRIVER_LOCATION,
            headers={TRIP_HEADER: trip_id},
            delivery_mode=aio_pika.DeliveryMode.NOT_PERSISTENT,
            expiration=LIVE_LOCATION_TTL_SECONDS,
        )
        await self._live.publish(message, user_key(rider_id), mandatory=False)

    async def publish_replaced(self, user_id: int, socket_ids: list[str]) -> None:
        """Tell the gateways holding the user's sockets to close these: unconfirmed,
        like a live location (a lost one leaves a socket open until the next)."""
        if self._live is None:
            raise PublishFailed("the gateway is not connected to the broker")
        message = aio_pika.Message(
            orjson.dumps(socket_ids),
            type=SOCKETS_REPLACED,
            delivery_mode=aio_pika.DeliveryMode.NOT_PERSISTENT,
        )
        await self._live.publish(message, user_key(user_id), mandatory=False)

    def notifications(self) -> AbstractQueueIterator:
        """The notifications of the users connected here, unacknowledged: Postgres keeps
        them, and a socket reads back from there whatever did not arrive."""
        if self._notifications_queue is None:
            raise PublishFailed("the gateway is not connected to the broker")
        return self._notifications_queue.iterator(no_ack=True)

    async def bind_user(self, user_id: int) -> None:
        assert self._notifications_queue is not None and self._notifications is not None
        await self._notifications_queue.bind(self._notifications, user_key(user_id))

    async def unbind_user(self, user_id: int) -> None:
        assert self._notifications_queue is not None and self._notifications is not None
        await self._notifications_queue.unbind(self._notifications, user_key(user_id))
