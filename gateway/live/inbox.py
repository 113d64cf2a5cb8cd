"""What reaches this gateway from the broker, and where each message goes.

The gateway's own queue (`gateway.live.broker`) carries:
- `user.<id>` with a number (x-seq): a notification of the user, for every socket
  of theirs here (`ConnectedUser.pass_on`);
- `user.<id>` with numbers (x-seqs): a notification of several users alike (a
  transition's rider and driver; the others' keys in CC), numbered here for each of
  them connected here, as their log has it, then passed on the same way;
- `user.<id>` without one: an offer or its withdrawal, sent to drivers by name
  (`OfferFanout.by_name`: the key, and the keys in CC, name them), or a driver's
  location for the rider of their trip under way (`driver.location`), passed on
  only while that trip is the rider's, or a worker's refusal of the user's command
  (`error`, a reply: for every socket of theirs here, whatever their state), or
  the ids of their sockets that made room for a newer one on another gateway
  (`sockets.replaced`, `gateway.live.open_sockets`);
- `gateways.locations`: a worker that started asks for the drivers' locations
  held here (`DriverLocations.replay`).
The offers queue carries the broadcasts (`OfferFanout.broadcast`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import orjson
from aio_pika.abc import AbstractIncomingMessage, AbstractQueueIterator
from opentelemetry.context import Context

from gateway.live import metrics
from gateway.live.connected import ConnectedUsers
from gateway.live.locations import DriverLocations
from gateway.live.offers import OfferFanout
from gateway.live.outgoing import Frame
from shared import tracing
from shared.locations import DRIVER_LOCATION
from shared.topology import (
    LOCATIONS_WANTED_KEY,
    SEQ_HEADER,
    SEQS_HEADER,
    SOCKETS_REPLACED,
    TRIP_HEADER,
)
from shared.wire import with_seq

log = logging.getLogger(__name__)

# The frame type of a worker's refusal: unnumbered, for the sender's sockets open now.
REFUSAL = "error"
# Unnumbered messages for one user's sockets here (the others name drivers for offers).
_FOR_ONE_USER = frozenset({DRIVER_LOCATION, REFUSAL, SOCKETS_REPLACED})

Route = Callable[[AbstractIncomingMessage], None]


async def forward(messages: AbstractQueueIterator, route: Route) -> None:
    """Every message of a queue, to where `route` sends it."""
    async for message in messages:
        try:
            route(message)
        except Exception:
            # One bad message must not end delivery for everyone here.
            log.exception("message not delivered routing_key=%s", message.routing_key)


class Inbox:
    def __init__(
        self, users: ConnectedUsers, offers: OfferFanout, locations: DriverLocations
    ) -> None:
        self._users = users
        self._offers = offers
        self._locations = locations

    def route(self, message: AbstractIncomingMessage) -> None:
        key = message.routing_key or ""
        if key == LOCATIONS_WANTED_KEY:
            self._locations.replay(self._users.drivers())
            return
        headers = message.headers or {}
        seq = headers.get(SEQ_HEADER)
        kind = message.type or "unknown"
        # The command's trace, for the writes to the sockets (`shared.tracing`).
        trace = tracing.extract(headers) if tracing.enabled else None
        seqs = headers.get(SEQS_HEADER)
        if isinstance(seqs, (str, bytes)):
            self._pass_on_each(message.body, orjson.loads(seqs), kind, trace)
            return
        if seq is None and kind not in _FOR_ONE_USER:
            self._offers.by_name(message)
            return
        _, _, user_id = key.partition(".")
        connected = self._users.get(int(user_id))
        if connected is None:
            return  # their last socket here closed after the message was routed
        if seq is not None:
            connected.pass_on(Frame(message.body.decode(), kind, int(str(seq)), trace))
        elif kind == DRIVER_LOCATION:
            trip = connected.under_way
            if trip is not None and trip.id == headers.get(TRIP_HEADER):
                connected.put_live(Frame(message.body.decode(), DRIVER_LOCATION))
                metrics.location_passed_on(message.body)
        elif kind == REFUSAL:
            connected.put_live(Frame(message.body.decode(), REFUSAL, trace=trace))
        else:
            connected.replace(set(orjson.loads(message.body)))

    def _pass_on_each(
        self, frame: bytes, seqs: dict[str, int], kind: str, trace: Context | None
    ) -> None:
        """One frame for several users: each of them here gets it with their number."""
        for user_id, seq in seqs.items():
            connected = self._users.get(int(user_id))
            if connected is not None:
                numbered = with_seq(frame, seq).decode()
                connected.pass_on(Frame(numbered, kind, seq, trace))
