"""Publishing notifications to the notifications exchange, with publisher confirms.

Each message through the broker costs about a millisecond and a half of CPU in all
(the worker, RabbitMQ and a gateway; `make bench SCENARIO=hops`), so what several
users are told alike goes as one: a transition's rider and driver get the same
frame, numbered in each one's sequence, and it leaves as one message for both
(`together`; each gateway numbers it for the users it holds).
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Sequence
from typing import cast

import aio_pika
import orjson
from aio_pika.abc import AbstractExchange, HeadersType

from dispatcher.notifications import Notification
from shared import tracing
from shared.broker import PublishFailed, publish_confirmed
from shared.topology import CC_HEADER, SEQ_HEADER, SEQS_HEADER
from shared.wire import without_seq

__all__ = ["NotificationPublisher", "PublishFailed"]

_SORTED_KEYS = orjson.OPT_SORT_KEYS


class NotificationPublisher:
    def __init__(self, exchange: AbstractExchange) -> None:
        self._exchange = exchange

    @property
    def exchange_name(self) -> str:
        return self._exchange.name

    async def publish(self, notifications: Sequence[Notification]) -> None:
        """Publish all at once and wait for every confirm; raise PublishFailed otherwise."""
        await asyncio.gather(*(self._publish_one(n) for n in together(notifications)))

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


def together(notifications: Sequence[Notification]) -> list[Notification]:
    """The notifications as messages: those numbered for users that carry the same
    frame (a transition's, to its rider and its driver) as one, the frame without a
    number, routed to the first user's key with the others' in CC and each user's
    number in SEQS_HEADER; every other one as it is.

    They come numbered as the log keeps them (`notification_log.record`), which is
    what the relay reads back too; so the number comes off here."""
    alike: dict[tuple[str, bytes, str], _Alike] = {}
    messages: list[Notification | _Alike] = []
    for notification in notifications:
        if notification.seq is None or notification.ttl_seconds is not None:
            messages.append(notification)
            continue
        frame = without_seq(notification.body, notification.seq)
        headers = {name: v for name, v in notification.headers.items() if name != SEQ_HEADER}
        key = (notification.frame_type, frame, orjson.dumps(headers, option=_SORTED_KEYS).decode())
        group = alike.get(key)
        if group is not None and all(n.user_id != notification.user_id for n in group.told):
            group.told.append(notification)
        else:
            # The first of its kind, or a second one for a user: one number a message.
            group = alike[key] = _Alike(frame, headers, [notification])
            messages.append(group)
    return [message.as_one() if isinstance(message, _Alike) else message for message in messages]


@dataclasses.dataclass(slots=True)
class _Alike:
    """Numbered notifications of one frame and the same headers, each for another user."""

    frame: bytes
    headers: dict[str, str | list[str]]
    told: list[Notification]

    def as_one(self) -> Notification:
        first = self.told[0]
        if len(self.told) == 1:
            return first
        headers = {
            **self.headers,
            CC_HEADER: [n.routing_key for n in self.told[1:]],
            SEQS_HEADER: orjson.dumps({str(n.user_id): n.seq for n in self.told}).decode(),
        }
        return dataclasses.replace(first, body=self.frame, headers=headers, user_id=None, seq=None)
