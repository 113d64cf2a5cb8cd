"""Declaring the broker topology with aio-pika: the exchanges and queues of `topology`.

Declarations are idempotent, so every process declares what it uses at start-up
and nobody depends on start-up order.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import aio_pika
from aio_pika.abc import (
    AbstractChannel,
    AbstractConnection,
    AbstractExchange,
    AbstractQueue,
    AbstractRobustConnection,
)
from aio_pika.exceptions import CONNECTION_EXCEPTIONS
from aio_pika.robust_connection import RobustConnection
from pamqp.commands import Basic
from yarl import URL

from shared.settings import Settings
from shared.topology import COMMAND_KEY_PATTERN, Topology

log = logging.getLogger(__name__)

RECONNECT_INTERVAL_SECONDS = 1

# The broker's backstop; workers dead-letter a failing command sooner themselves.
COMMAND_DELIVERY_LIMIT = 10
# Dead-lettered commands kept for an operator to look at, at most; the oldest go first.
DEAD_LETTER_BACKLOG = 10_000


async def connect(settings: Settings, name: str) -> AbstractRobustConnection:
    """A connection that reconnects by itself and restores its channels and consumers;
    to the next node of the cluster when TAXI_AMQP_URL lists several."""
    urls = settings.amqp_urls
    connection = ClusterConnection(
        [URL(url) for url in urls],
        client_properties={"connection_name": name},
        # Try again every second while the broker is away: traffic resumes within
        # a second or two of it coming back.
        reconnect_interval=RECONNECT_INTERVAL_SECONDS,
    )
    await connection.connect()
    return connection


async def connect_once(settings: Settings) -> AbstractConnection:
    """A plain connection, for a one-off job: to the first node that answers."""
    failure: BaseException | None = None
    for url in settings.amqp_urls:
        try:
            return await aio_pika.connect(url)
        except CONNECTION_EXCEPTIONS as exc:
            failure = exc
    assert failure is not None
    raise failure


class ClusterConnection(RobustConnection):
    """aio-pika's robust connection, over the nodes of a cluster.

    Each connection attempt (the first, and every reconnection after a loss) tries
    the nodes in turn, starting after the one it last used, until one answers; only
    when none does does the attempt fail (and, when reconnecting, wait a second and
    try again). With one URL it is aio-pika's robust connection exactly. Queues
    that must survive a node's loss are quorum queues, replicated on every node;
    what a connection declared for itself (exclusive queues, consumers) is declared
    again on the node it reconnects to.
    """

    def __init__(self, urls: list[URL], **kwargs: Any) -> None:
        if not urls:
            raise ValueError("no broker URL to connect to")
        super().__init__(urls[0], **kwargs)
        self._urls = urls
        self._next = 0
        # Between the loss of a node and the connection restored: what an operator
        # reads is one WARNING when it is lost and one INFO naming the node it moved to
        # (aio-pika's and aiormq's own lines about it are quietened in shared.logs).
        self._lost = False

    async def _on_connection_close(self, closing: asyncio.Future[Any]) -> None:
        await super()._on_connection_close(closing)
        if not (self.close_called or self.is_closed or self._lost):
            self._lost = True
            elsewhere = "the next node that answers" if len(self._urls) > 1 else "it"
            log.warning("broker node lost node=%s: reconnecting to %s", _shown(self.url), elsewhere)

    async def _on_connected(self) -> None:
        # Channels and consumers are restored by the time this returns.
        await super()._on_connected()
        if self._lost:
            self._lost = False
            log.info("broker connection restored node=%s", _shown(self.url))

    # RobustConnection makes every attempt through this (name-mangled) method; the
    # one override that sees each attempt, first and later, without copying its loop.
    async def _RobustConnection__connect_transport(self) -> None:
        if self.connection_attempt:
            # A reconnection: give the cluster a moment first. Within about 0.3 s of a
            # node's loss, RabbitMQ 3.10 refuses every publish of a channel that goes
            # to a quorum queue whose leader it was, for good, and refuses to declare
            # again the exclusive queues of the lost connection (RESOURCE_LOCKED);
            # reconnecting at once to the next node lands in that window.
            await asyncio.sleep(RECONNECT_INTERVAL_SECONDS)
        failure: BaseException | None = None
        for _ in self._urls:
            self.url = self._urls[self._next]
            self._next = (self._next + 1) % len(self._urls)
            try:
                await super()._RobustConnection__connect_transport()  # type: ignore[misc]
                return
            except CONNECTION_EXCEPTIONS as exc:
                failure = exc
                # At start-up each one is worth a line; during an outage, already reported,
                # one for each node every second would bury everything else.
                log.log(
                    logging.DEBUG if self._lost else logging.WARNING,
                    "broker node unreachable node=%s error=%r",
                    _shown(self.url),
                    exc,
                )
        assert failure is not None
        raise failure


def _shown(url: URL) -> str:
    """A node's URL for a log line, never with its password."""
    return str(url.with_password("******") if url.password else url)


async def declare_exchanges(
    channel: AbstractChannel, topology: Topology
) -> tuple[AbstractExchange, AbstractExchange]:
    """Return the (commands, notifications) exchanges."""
    commands = await channel.declare_exchange(
        topology.commands_exchange, aio_pika.ExchangeType.TOPIC, durable=True
    )
    notifications = await channel.declare_exchange(
        topology.notifications_exchange, aio_pika.ExchangeType.TOPIC, durable=True
    )
    return commands, notifications


async def declare_locations_exchange(
    channel: AbstractChannel, topology: Topology
) -> AbstractExchange:
    """Drivers' locations, from the gateways to every worker. Transient: a location is
    worth nothing a few seconds later, and the next report replaces a lost one."""
    return await channel.declare_exchange(
        topology.locations_exchange, aio_pika.ExchangeType.FANOUT, durable=False
    )


async def declare_dispatcher_queue(
    channel: AbstractChannel, topology: Topology, commands: AbstractExchange
) -> AbstractQueue:
    dead_letters = await channel.declare_exchange(
        topology.dead_letter_exchange, aio_pika.ExchangeType.FANOUT, durable=True
    )
    dead_letter_queue = await channel.declare_queue(
        topology.dead_letter_queue,
        durable=True,
        # Replicated like the command queue it takes from: a node's loss loses no letter.
        arguments={
            "x-queue-type": "quorum",
            "x-max-length": DEAD_LETTER_BACKLOG,
            "x-overflow": "drop-head",
        },
    )
    await dead_letter_queue.bind(dead_letters)
    queue = await channel.declare_queue(
        topology.dispatcher_queue,
        durable=True,
        arguments={
            # A quorum queue counts deliveries, so a command that crashes every
            # worker that takes it ends up dead-lettered instead of looping forever.
            "x-queue-type": "quorum",
            "x-delivery-limit": COMMAND_DELIVERY_LIMIT,
            "x-dead-letter-exchange": topology.dead_letter_exchange,
        },
    )
    await queue.bind(commands, COMMAND_KEY_PATTERN)
    return queue


# Notifications waiting for one gateway at most; older ones are dropped first (a
# socket reads a dropped one back from the notification log).
GATEWAY_BACKLOG = 100_000


def gateway_queue_arguments() -> dict[str, Any]:
    """Bounds of a gateway's own notifications queue: a gateway that stalls costs the
    broker a bounded amount, and loses nothing that the log does not keep."""
    return {"x-max-length": GATEWAY_BACKLOG, "x-overflow": "drop-head"}


class PublishFailed(Exception):
    """The broker did not confirm a message; the caller must not assume it was sent."""


PUBLISH_TIMEOUT_SECONDS = 10


async def publish_confirmed(
    exchange: AbstractExchange, message: aio_pika.Message, routing_key: str, *, mandatory: bool
) -> None:
    """Publish and wait for the broker's confirm (the channel must have confirms on)."""
    try:
        confirmation = await exchange.publish(
            message, routing_key, mandatory=mandatory, timeout=PUBLISH_TIMEOUT_SECONDS
        )
    except (aio_pika.exceptions.AMQPError, TimeoutError, RuntimeError, ConnectionError) as exc:
        raise PublishFailed(f"the broker did not take the message: {exc!r}") from exc
    if confirmation is not None and not isinstance(confirmation, Basic.Ack):
        raise PublishFailed("the broker refused the message")
