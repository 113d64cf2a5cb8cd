"""Who is told what: the notifications a trip's change causes, as pure functions.

- the rider gets every change of their trip;
- drivers are offered a new trip: by name, the nearest free ones dispatch chose
  (`dispatcher.dispatch`), each told their distance to the pick-up, when it has a
  pick-up point; by broadcast, every free driver, when it has none. Offers expire;
- when an offered trip is taken or cancelled, the same audience is told it is gone;
- the assigned driver gets every change of their trip (the gateway pauses their
  offers while they are busy with it);
- a driver who declined an offer, or let it expire, is told it is withdrawn from them
  (`trip.withdrawn`), on every socket of theirs, and nobody else is.

A notification for one user's sequence names them: it is numbered and kept for
resume when stored (`dispatcher.notification_log`). Offers are worth nothing later:
no number, and never kept, whether sent by name or broadcast. A refusal is a reply to
one request, as the gateway's own error frames are: it goes to the sender's sockets
open at the time, without a number, and is not kept in the log (a request with a
`request_id` gets it again when retried: `dispatcher.repository.keep_refusal`).
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import Enum

import orjson

from shared import wire
from shared.topology import (
    CC_HEADER,
    DISTANCES_HEADER,
    DRIVER_OFFERS_KEY,
    EXCLUDE_USER_HEADER,
    TRIP_HEADER,
    VERSION_HEADER,
    user_key,
)
from shared.trips import WITHDRAWN, EventType, Status, Transition, Trip, Withdrawal


@dataclass(frozen=True, slots=True)
class Notification:
    routing_key: str
    body: bytes
    # The frame's `type`, also set as the message's AMQP type so nobody parses the body to count it.
    frame_type: str = ""
    # Seconds after which the notification is worth nothing (offers); None: never.
    ttl_seconds: int | None = None
    # AMQP headers: strings, and the list of further routing keys (CC) of an offer
    # sent to several drivers by name.
    headers: dict[str, str | list[str]] = field(default_factory=dict)
    # The user whose sequence it joins (None for offers, which are not kept), and its
    # number in that sequence once stored.
    user_id: int | None = None
    seq: int | None = None


def for_user(user_id: int, body: bytes, frame_type: str) -> Notification:
    return Notification(user_key(user_id), body, frame_type, user_id=user_id)


class Broadcast(Enum):
    """Which free drivers an offer's broadcast reaches, beside those offered by name."""

    NOBODY = "nobody"
    # Every free driver: the trip has no pick-up point to measure from.
    EVERYONE = "everyone"


@dataclass(frozen=True, slots=True)
class Audience:
    """The drivers who hear of a trip's offer, or of its withdrawal: some by name (with
    their distance to the pick-up, when it is an offer), the rest by broadcast."""

    named: Sequence[tuple[int, float | None]] = ()
    broadcast: Broadcast = Broadcast.NOBODY


NOBODY = Audience()


def for_transition(
    transition: Transition, audience: Audience, offer_ttl_seconds: int
) -> list[Notification]:
    trip = transition.after
    event_id = str(uuid.uuid4())
    frame = wire.encode(
        {"type": transition.event.value, "event_id": event_id, "data": trip.payload()}
    )
    notifications = [for_user(trip.rider.id, frame, transition.event.value)]
    if trip.driver is not None:
        notifications.append(for_user(trip.driver.id, frame, transition.event.value))
    withdrawn_offer = transition.before is not None and transition.before.status is Status.REQUESTED
    if transition.event is EventType.REQUESTED:
        notifications += offers(trip, EventType.REQUESTED, audience, offer_ttl_seconds, event_id)
    elif withdrawn_offer and transition.event is EventType.ACCEPTED:
        assert trip.driver is not None
        # The driver who took it is not told it was taken.
        notifications += offers(
            trip, EventType.TAKEN, audience, offer_ttl_seconds, event_id, trip.driver.id
        )
    elif withdrawn_offer:
        notifications += offers(trip, EventType.CANCELLED, audience, offer_ttl_seconds, event_id)
    return notifications


def offers(
    trip: Trip,
    event: EventType,
    audience: Audience,
    ttl_seconds: int,
    event_id: str | None = None,
    excluded: int | None = None,
) -> list[Notification]:
    """The trip's offer (or withdrawal, by `event`) to `audience`, leaving out `excluded`.

    They name the trip and its version, so a gateway drops one older than what its
    drivers were already sent (a late relayed offer must not bring back a trip that
    was taken)."""
    event_id = event_id or str(uuid.uuid4())
    headers = {TRIP_HEADER: str(trip.id), VERSION_HEADER: str(trip.version)}
    body = wire.encode({"type": event.value, "event_id": event_id, "data": trip.payload()})

    def offer(routing_key: str, extra: dict[str, str | list[str]]) -> Notification:
        return Notification(
            routing_key, body, event.value, ttl_seconds, headers={**headers, **extra}
        )

    sent = []
    named = [
        (driver_id, distance) for driver_id, distance in audience.named if driver_id != excluded
    ]
    if named:
        # One message for every driver named, however many: the first's key routes it
        # and the others' go in CC (RabbitMQ's sender-selected distribution), so each
        # gateway gets it once and gives each of its named drivers their own distance.
        keys = [user_key(driver_id) for driver_id, _ in named]
        extra: dict[str, str | list[str]] = {}
        if len(keys) > 1:
            extra[CC_HEADER] = keys[1:]
        distances = {
            str(driver_id): round(distance, 1)
            for driver_id, distance in named
            if distance is not None
        }
        if distances:
            extra[DISTANCES_HEADER] = orjson.dumps(distances).decode()
        sent.append(offer(keys[0], extra))
    if audience.broadcast is not Broadcast.NOBODY:
        broadcast: dict[str, str | list[str]] = {}
        if excluded is not None:
            broadcast[EXCLUDE_USER_HEADER] = str(excluded)
        sent.append(offer(DRIVER_OFFERS_KEY, broadcast))
    return sent


def withdrawn(withdrawal: Withdrawal, ttl_seconds: int) -> Notification:
    """`trip.withdrawn` for the one driver whose offer it was: unnumbered like the offer,
    routed to them by name with the trip and its version as an offer is, so every
    gateway holding a socket of theirs passes it to each of them (`OfferFanout.by_name`;
    the trip keeps its version, so it is never taken for an outdated one)."""
    trip = withdrawal.trip
    body = wire.encode(
        {"type": WITHDRAWN, "event_id": str(uuid.uuid4()), "data": withdrawal.payload()}
    )
    return Notification(
        user_key(withdrawal.driver_id),
        body,
        WITHDRAWN,
        ttl_seconds,
        headers={TRIP_HEADER: str(trip.id), VERSION_HEADER: str(trip.version)},
    )


def for_refusal(
    user_id: int,
    code: str,
    message: str,
    request: str,
    request_id: str | None = None,
    trip_id: str | None = None,
) -> Notification:
    """The error frame that refuses a user's command: a reply, unnumbered (see above)."""
    frame = wire.error_frame(
        code, message, request, request_id, trip_id, event_id=str(uuid.uuid4())
    )
    return reply(user_id, frame)


def reply(user_id: int, frame: bytes) -> Notification:
    """An error frame for the user's sockets open now: routed as their notifications are,
    but not numbered and not kept (`user_id` stays None)."""
    return Notification(user_key(user_id), frame, "error")
