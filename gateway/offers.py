"""Offers fanned out to the drivers connected to this gateway.

The gateway holds one subscription to the offers broadcast and puts each offer (and
each withdrawal: `trip.taken`, `trip.cancelled`) in the buffer of every socket of
every driver connected here who is free, except the one a broadcast leaves out.
Putting never waits, so a driver who reads slowly delays nobody else. A driver who
is offline is connected nowhere, so gets nothing, and sees no stale offer on return.
Offers are not numbered: they are worth nothing later, and nobody resumes them.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

from aio_pika.abc import AbstractIncomingMessage, AbstractQueueIterator

from gateway.connected import ConnectedUsers
from gateway.outgoing import Frame
from shared.topology import EXCLUDE_USER_HEADER, TRIP_HEADER, VERSION_HEADER

log = logging.getLogger(__name__)


# Trips whose latest offer version is remembered; offers live seconds, so the
# newest few thousand trips are plenty.
REMEMBERED_TRIPS = 10_000


class OfferFanout:
    def __init__(self, users: ConnectedUsers) -> None:
        self._users = users
        self._versions: OrderedDict[str, int] = OrderedDict()

    async def run(self, offers: AbstractQueueIterator) -> None:
        async for message in offers:
            try:
                self.deliver(message)
            except Exception:
                # One bad message must not end offers for every driver here.
                log.exception("offer not delivered message_type=%s", message.type)

    def deliver(self, message: AbstractIncomingMessage) -> None:
        if self._outdated(message.headers or {}):
            return
        excluded = (message.headers or {}).get(EXCLUDE_USER_HEADER)
        excluded_id = int(excluded) if isinstance(excluded, str) and excluded.isdigit() else None
        # The same frame goes to every driver here: decode it once.
        frame = Frame(message.body.decode(), message.type or "unknown")
        for driver in self._users.drivers():
            if driver.busy or driver.user.id == excluded_id:
                continue
            for socket in driver.sockets:
                socket.put(frame)

    def _outdated(self, headers: Mapping[str, Any]) -> bool:
        """Whether drivers here were already sent this offer or withdrawal of the trip, or
        a newer one (a late relayed offer must not bring back a trip that was taken)."""
        trip, version = headers.get(TRIP_HEADER), headers.get(VERSION_HEADER)
        if not isinstance(trip, str) or not isinstance(version, str) or not version.isdigit():
            return False
        if int(version) <= self._versions.get(trip, 0):
            return True  # older, or the same one twice (published and relayed)
        self._versions[trip] = int(version)
        self._versions.move_to_end(trip)
        if len(self._versions) > REMEMBERED_TRIPS:
            self._versions.popitem(last=False)
        return False
