"""Offers to the drivers connected to this gateway, by broadcast or by name.

A trip without a pick-up point is offered to every free driver by broadcast: the
gateway holds one subscription to it and puts each offer (and each withdrawal:
`trip.taken`, `trip.cancelled`) in the buffer of every socket of every free driver
connected here, except the one a broadcast leaves out. A trip with a pick-up point
is offered by name to the nearest drivers dispatch chose (`user.<id>`, unnumbered,
each with their own distance), and by broadcast only to drivers who have not
reported a location. Putting never waits, so a driver who reads slowly delays
nobody else. A driver who is offline is connected nowhere, so gets nothing, and
sees no stale offer on return. Offers are not numbered: they are worth nothing
later, and nobody resumes them.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator, Mapping
from typing import Any

from aio_pika.abc import AbstractIncomingMessage

from gateway.connected import ConnectedUser, ConnectedUsers
from gateway.outgoing import Frame
from shared.topology import (
    AUDIENCE_HEADER,
    EXCLUDE_USER_HEADER,
    TRIP_HEADER,
    UNLOCATED,
    VERSION_HEADER,
)

# Trips whose latest offer version is remembered; offers live seconds, so the
# newest few thousand trips are plenty.
REMEMBERED_TRIPS = 10_000


class OfferFanout:
    def __init__(self, users: ConnectedUsers) -> None:
        self._users = users
        # Per trip: the newest version passed on here (by name or broadcast), and the
        # newest broadcast passed on (a second copy of one is a relayed duplicate).
        self._versions: OrderedDict[str, tuple[int, int]] = OrderedDict()

    def broadcast(self, message: AbstractIncomingMessage) -> None:
        """An offer or withdrawal for every free driver here, or for the unlocated ones."""
        headers = message.headers or {}
        if self._outdated(headers, broadcast=True):
            return
        excluded = headers.get(EXCLUDE_USER_HEADER)
        excluded_id = int(excluded) if isinstance(excluded, str) and excluded.isdigit() else None
        drivers: Iterator[ConnectedUser] = (
            self._users.unlocated_drivers()
            if headers.get(AUDIENCE_HEADER) == UNLOCATED
            else self._users.drivers()
        )
        # The same frame goes to every driver here: decode it once.
        frame = _frame(message)
        for driver in drivers:
            if not driver.busy and driver.user.id != excluded_id:
                for socket in driver.sockets:
                    socket.put(frame)

    def to_driver(self, driver: ConnectedUser, message: AbstractIncomingMessage) -> None:
        """An offer or withdrawal sent to this driver by name."""
        if driver.busy or self._outdated(message.headers or {}, broadcast=False):
            return
        frame = _frame(message)
        for socket in driver.sockets:
            socket.put(frame)

    def _outdated(self, headers: Mapping[str, Any], *, broadcast: bool) -> bool:
        """Whether drivers here were already sent a newer offer or withdrawal of the trip
        (a late relayed offer must not bring back a trip that was taken), or, for a
        broadcast, this very one: a broadcast reaches a gateway once, so a second copy
        was relayed. Offers by name of one version go to several drivers here, each
        once, and a broadcast of that version still reaches the unlocated drivers."""
        trip, version = headers.get(TRIP_HEADER), headers.get(VERSION_HEADER)
        if not isinstance(trip, str) or not isinstance(version, str) or not version.isdigit():
            return False
        newest, broadcast_newest = self._versions.get(trip, (0, 0))
        if int(version) < newest or (broadcast and int(version) <= broadcast_newest):
            return True
        self._versions[trip] = (
            max(newest, int(version)),
            int(version) if broadcast else broadcast_newest,
        )
        self._versions.move_to_end(trip)
        if len(self._versions) > REMEMBERED_TRIPS:
            self._versions.popitem(last=False)
        return False


def _frame(message: AbstractIncomingMessage) -> Frame:
    return Frame(message.body.decode(), message.type or "unknown")
