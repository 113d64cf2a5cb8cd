"""Who is told what: the notifications a trip's change causes, as pure functions.

- the rider gets every change of their trip;
- available drivers are offered a new trip through the offers broadcast (it expires);
- when an offered trip is taken or cancelled, the same broadcast withdraws it;
- the assigned driver gets every change of their trip (the gateway pauses their
  offers while they are busy with it).

A notification for one user names them: it is numbered in their sequence and kept
for resume when stored (`dispatcher.notification_log`). Offers are for nobody in
particular and worth nothing later: no number, and never kept.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

from shared import wire
from shared.topology import (
    DRIVER_OFFERS_KEY,
    EXCLUDE_USER_HEADER,
    TRIP_HEADER,
    VERSION_HEADER,
    user_key,
)
from shared.trips import EventType, Status, Transition, Trip


@dataclass(frozen=True, slots=True)
class Notification:
    routing_key: str
    body: bytes
    # The frame's `type`, also set as the message's AMQP type so nobody parses the body to count it.
    frame_type: str = ""
    # Seconds after which the notification is worth nothing (offers); None: never.
    ttl_seconds: int | None = None
    headers: dict[str, str] = field(default_factory=dict)
    # The one user it is for (None for the offers broadcast), and its number in that
    # user's sequence once stored.
    user_id: int | None = None
    seq: int | None = None


def for_user(user_id: int, body: bytes, frame_type: str) -> Notification:
    return Notification(user_key(user_id), body, frame_type, user_id=user_id)


def for_transition(transition: Transition, offer_ttl_seconds: int) -> list[Notification]:
    trip = transition.after
    event_id = str(uuid.uuid4())

    def frame(event: EventType) -> bytes:
        return wire.encode({"type": event.value, "event_id": event_id, "data": trip.payload()})

    notifications = [for_user(trip.rider.id, frame(transition.event), transition.event.value)]
    if trip.driver is not None:
        notifications.append(
            for_user(trip.driver.id, frame(transition.event), transition.event.value)
        )
    offer = _offer_of(trip, frame, offer_ttl_seconds)
    withdrawn_offer = transition.before is not None and transition.before.status is Status.REQUESTED
    if transition.event is EventType.REQUESTED:
        notifications.append(offer(EventType.REQUESTED))
    elif withdrawn_offer and transition.event is EventType.ACCEPTED:
        assert trip.driver is not None
        # The driver who took it is not told it was taken.
        notifications.append(offer(EventType.TAKEN, {EXCLUDE_USER_HEADER: str(trip.driver.id)}))
    elif withdrawn_offer:
        notifications.append(offer(EventType.CANCELLED))
    return notifications


def _offer_of(
    trip: Trip, frame: Callable[[EventType], bytes], ttl_seconds: int
) -> Callable[..., Notification]:
    """Offers and their withdrawals name the trip and its version, so a gateway drops
    one older than what its drivers were already sent (a late relayed offer must not
    bring back a trip that was taken)."""

    def offer(event: EventType, headers: dict[str, str] | None = None) -> Notification:
        return Notification(
            DRIVER_OFFERS_KEY,
            frame(event),
            event.value,
            ttl_seconds,
            headers={
                TRIP_HEADER: str(trip.id),
                VERSION_HEADER: str(trip.version),
                **(headers or {}),
            },
        )

    return offer


def for_refusal(
    user_id: int,
    code: str,
    message: str,
    request: str,
    request_id: str | None = None,
    trip_id: str | None = None,
) -> Notification:
    frame = wire.error_frame(
        code, message, request, request_id, trip_id, event_id=str(uuid.uuid4())
    )
    return for_user(user_id, frame, "error")
