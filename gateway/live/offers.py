"""Offers to the drivers connected to this gateway, by broadcast or by name.

A trip without a pick-up point is offered to every free driver by broadcast: the
gateway holds one subscription to it and puts each offer (and each withdrawal:
`trip.taken`, `trip.cancelled`) in the buffer of every socket of every free driver
connected here, except the one a broadcast leaves out. A trip with a pick-up point
is offered by name to the nearest drivers dispatch chose: one unnumbered message for
all of them (`user.<id>` of the first, the others in CC), which reaches each gateway
holding any of them once, and which the gateway gives each of its named drivers
with their own distance (a driver who never reported a location is offered only
trips without a pick-up point). Putting never waits, so a driver who reads slowly delays
nobody else. A driver who is offline is connected nowhere, so gets nothing, and
sees no stale offer on return. Offers are not numbered: they are worth nothing
later, and nobody resumes them.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

import orjson
from aio_pika.abc import AbstractIncomingMessage

from gateway.live.connected import ConnectedUsers
from gateway.live.outgoing import Frame
from shared import tracing
from shared.topology import (
    CC_HEADER,
    DISTANCES_HEADER,
    EXCLUDE_USER_HEADER,
    TRIP_HEADER,
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
        """An offer or withdrawal for every free driver here."""
        headers = message.headers or {}
        if self._outdated(headers, broadcast=True):
            return
        excluded = headers.get(EXCLUDE_USER_HEADER)
        excluded_id = int(excluded) if isinstance(excluded, str) and excluded.isdigit() else None
        # The same frame goes to every driver here: decode it once.
        frame = _frame(message)
        if tracing.enabled:
            frame = replace(frame, trace=tracing.extract(message.headers))
        for driver in self._users.drivers():
            if not driver.busy and driver.user.id != excluded_id:
                for socket in driver.sockets:
                    socket.put(frame)

    def by_name(self, message: AbstractIncomingMessage) -> None:
        """An offer or withdrawal for the drivers it names, to those of them here."""
        headers = message.headers or {}
        if self._outdated(headers, broadcast=False):
            return
        distances = _distances(headers.get(DISTANCES_HEADER))
        for key in (message.routing_key or "", *_keys(headers.get(CC_HEADER))):
            _, _, user_id = key.partition(".")
            driver = self._users.get(int(user_id)) if user_id.isdigit() else None
            if driver is None or driver.busy:
                continue
            distance = distances.get(user_id)
            frame = (
                _frame(message)
                if distance is None
                else Frame(with_distance(message.body, distance), message.type or "unknown")
            )
            if tracing.enabled:
                frame = replace(frame, trace=tracing.extract(headers))
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


def with_distance(body: bytes, distance: float) -> str:
    """An offer's frame as one named driver gets it: with how far they are from the
    pick-up (`data.distance_m`)."""
    frame = orjson.loads(body)
    frame["data"]["distance_m"] = distance
    return orjson.dumps(frame).decode()


def _keys(value: object) -> list[str]:
    """The routing keys of a CC header (the broker hands them over as text or bytes)."""
    if not isinstance(value, list):
        return []
    return [key.decode() if isinstance(key, bytes) else str(key) for key in value]


def _distances(value: object) -> dict[str, float]:
    if isinstance(value, bytes):
        value = value.decode()
    if not isinstance(value, str):
        return {}
    try:
        decoded = orjson.loads(value)
    except orjson.JSONDecodeError:
        return {}
    return decoded if isinstance(decoded, dict) else {}
