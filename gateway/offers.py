"""Offers fanned out to the drivers connected to this gateway.

The gateway holds one subscription to the offers broadcast and forwards each offer
(and each withdrawal: `trip.taken`, `trip.cancelled`) to every driver connected
here who is free, except the one a broadcast leaves out. A driver who is offline
is not connected anywhere, so gets nothing, and sees no stale offer on return.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from aio_pika.abc import AbstractIncomingMessage, AbstractQueueIterator

from gateway import metrics
from gateway.broker import Inbox
from shared.topology import EXCLUDE_USER_HEADER

log = logging.getLogger(__name__)

# Sends one text frame on the driver's socket.
SendText = Callable[[str], Awaitable[None]]


@dataclass(eq=False)
class ConnectedDriver:
    user_id: int
    inbox: Inbox
    send_text: SendText


class OfferFanout:
    def __init__(self) -> None:
        self._drivers: set[ConnectedDriver] = set()

    def register(self, driver: ConnectedDriver) -> None:
        self._drivers.add(driver)

    def unregister(self, driver: ConnectedDriver) -> None:
        self._drivers.discard(driver)

    async def run(self, offers: AbstractQueueIterator) -> None:
        async for message in offers:
            try:
                await self.deliver(message)
            except Exception:
                # One bad message must not end offers for every driver here.
                log.exception("offer not delivered message_type=%s", message.type)

    async def deliver(self, message: AbstractIncomingMessage) -> None:
        excluded = (message.headers or {}).get(EXCLUDE_USER_HEADER)
        excluded_id = int(excluded) if isinstance(excluded, str) and excluded.isdigit() else None
        # The same frame goes to every driver here: decode it once, count it once.
        text = message.body.decode()
        sent = 0
        for driver in list(self._drivers):
            if driver.inbox.offers_paused or driver.user_id == excluded_id:
                continue
            try:
                await driver.send_text(text)
            except Exception as exc:
                # The socket is closing (or closed); its endpoint unregisters it.
                log.debug("offer not sent user_id=%s error=%r", driver.user_id, exc)
            else:
                sent += 1
        metrics.FRAMES_OUT.labels(message.type or "unknown").inc(sent)
