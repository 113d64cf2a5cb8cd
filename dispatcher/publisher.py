"""Publishing notifications to the notifications exchange, with publisher confirms."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import cast

import aio_pika
from aio_pika.abc import AbstractExchange, HeadersType

from dispatcher.notifications import Notification
from shared import tracing
from shared.broker import PublishFailed, publish_confirmed

__all__ = ["NotificationPublisher", "PublishFailed"]


class NotificationPublisher:
    def __init__(self, exchange: AbstractExchange) -> None:
        self._exchange = exchange

    @property
    def exchange_name(self) -> str:
        return self._exchange.name

    async def publish(self, notifications: Sequence[Notification]) -> None:
        """Publish all at once and wait for every confirm; raise PublishFailed otherwise."""
        await asyncio.gather(*(self._publish_one(n) for n in notifications))

    async def _publish_one(self, notification: Notification) -> None:
        persistent = notification.ttl_seconds is None
        headers = dict(notification.headers)
        if tracing.enabled:
            # The command's trace, continued by the gateway's writes to the sockets.
            tracing.inject(headers)
        message = aio_pika.Message(
            notification.body,
            content_type="application/json",
            type=notification.frame_type or None,
            # A list of routing keys is an AMQP array (FieldArray), which the type
            # checker cannot see a list[str] as.
            headers=cast(HeadersType, headers),
            # Offers are worth nothing after their time to live, so they are not
            # written to disk; every other notification survives a broker restart.
            delivery_mode=(
                aio_pika.DeliveryMode.PERSISTENT
                if persistent
                else aio_pika.DeliveryMode.NOT_PERSISTENT
            ),
            expiration=notification.ttl_seconds,
        )
        # Not mandatory: a user who never connected has no queue, and that is fine.
        await publish_confirmed(self._exchange, message, notification.routing_key, mandatory=False)
