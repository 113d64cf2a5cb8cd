"""Drivers' locations, from every gateway into this worker's index of free drivers.

Each worker has a queue of its own on the locations exchange, so every worker's
index sees every report. The queue is exclusive and transient, and bounded by
length and age: a location is worth nothing once stale, and losing one costs
nothing but waiting for the next report. A worker that starts asks the gateways for
the locations they hold, so it dispatches by distance at once.

Every batch names its gateway, and every gateway sends one at least once a second,
empty when it has nothing to report: the index notes when it last heard from each,
and passes over the drivers of a gateway silent for TAXI_GATEWAY_SILENT_SECONDS
(killed, or cut off from the broker), who could not be reached with an offer.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractExchange, AbstractIncomingMessage

from dispatcher.nearby import NearbyDrivers
from shared import broker
from shared.driver_reports import decode_reports
from shared.topology import LOCATIONS_WANTED_KEY, Topology

log = logging.getLogger(__name__)

# Reports waiting for one worker at most; the oldest are dropped first.
LOCATIONS_BACKLOG = 50_000


class LocationFeed:
    def __init__(
        self,
        drivers: NearbyDrivers,
        stale_seconds: float,
        clock: Callable[[], float] = time.time,
        heard_clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._drivers = drivers
        self._stale_seconds = stale_seconds
        self._clock = clock
        # When a gateway was heard: a clock no adjustment of the wall clock moves back.
        self._heard_clock = heard_clock

    async def start(
        self, channel: AbstractChannel, topology: Topology, notifications: AbstractExchange
    ) -> None:
        """Consume every gateway's reports, then ask the gateways for what they hold."""
        exchange = await broker.declare_locations_exchange(channel, topology)
        queue = await channel.declare_queue(
            exclusive=True,
            auto_delete=True,
            arguments={
                "x-max-length": LOCATIONS_BACKLOG,
                "x-overflow": "drop-head",
                "x-message-ttl": int(self._stale_seconds * 1000),
            },
        )
        await queue.bind(exchange)
        await queue.consume(self._on_message, no_ack=True)
        await notifications.publish(
            aio_pika.Message(b"", delivery_mode=aio_pika.DeliveryMode.NOT_PERSISTENT),
            LOCATIONS_WANTED_KEY,
        )

    async def _on_message(self, message: AbstractIncomingMessage) -> None:
        self.apply(message.body)

    def apply(self, body: bytes) -> None:
        """One gateway message: that the gateway is there, and its reports, each a free
        driver's place, or that they are busy or their last socket there closed."""
        gateway, reports, refused = decode_reports(body)
        if refused:
            log.warning("driver reports ignored count=%d first=%s", len(refused), refused[0])
        drivers = self._drivers
        if gateway is not None:
            drivers.heard(gateway, self._heard_clock())
        for driver_id, lat, lng, at, free in reports:
            if lat is not None and lng is not None and free:
                drivers.update(driver_id, lat, lng, at, gateway)
            elif free:
                # Gone from this gateway; they may still be reporting through another.
                drivers.forget(driver_id, gateway)
            else:
                drivers.forget(driver_id)

    async def sweep(self) -> None:
        """Drop drivers whose last report went stale, so the index holds who is around."""
        self._drivers.sweep(self._clock(), self._stale_seconds)
