"""Who is told what: the notifications a trip's change causes, as pure functions.

- the rider gets every change of their trip;
- available drivers are offered a new trip through the offers broadcast (it expires);
- when an offered trip is taken or cancelled, the same broadcast withdraws it;
- the assigned driver gets every change of their trip, and their offers pause
  while they are busy with it.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field

from shared import wire
from shared.topology import (
    DRIVER_OFFERS_KEY,
    EXCLUDE_USER_HEADER,
    OFFERS_HEADER,
    PAUSE_OFFERS,
    RESUME_OFFERS,
    user_key,
)
from shared.trips import EventType, Status, Transition


@dataclass(frozen=True, slots=True)
class Notification:
    routing_key: str
    body: bytes
    # The frame's `type`, also set as the message's AMQP type so nobody parses the body to count it.
    frame_type: str = ""
    # Seconds after which the notification is worth nothing (offers); None: never.
    ttl_seconds: int | None = None
    headers: dict[str, str] = field(default_factory=dict)


def for_transition(transition: Transition, offer_ttl_seconds: int) -> list[Notification]:
    trip = transition.after
    event_id = str(uuid.uuid4())

    def frame(event: EventType) -> bytes:
        return wire.encode({"type": event.value, "event_id": event_id, "data": trip.payload()})

    notifications = [
        Notification(user_key(trip.rider.id), frame(transition.event), transition.event.value)
    ]
    if trip.driver is not None:
        notifications.append(
            Notification(
                user_key(trip.driver.id),
                frame(transition.event),
                transition.event.value,
                headers=_offers_directive(transition),
            )
        )
    withdrawn_offer = transition.before is not None and transition.before.status is Status.REQUESTED
    if transition.event is EventType.REQUESTED:
        notifications.append(
            Notification(
                DRIVER_OFFERS_KEY,
                frame(EventType.REQUESTED),
                EventType.REQUESTED.value,
                offer_ttl_seconds,
            )
        )
    elif withdrawn_offer and transition.event is EventType.ACCEPTED:
        assert trip.driver is not None
        notifications.append(
            Notification(
                DRIVER_OFFERS_KEY,
                frame(EventType.TAKEN),
                EventType.TAKEN.value,
                offer_ttl_seconds,
                headers={EXCLUDE_USER_HEADER: str(trip.driver.id)},
            )
        )
    elif withdrawn_offer:
        notifications.append(
            Notification(
                DRIVER_OFFERS_KEY,
                frame(EventType.CANCELLED),
                EventType.CANCELLED.value,
                offer_ttl_seconds,
            )
        )
    return notifications


def for_refusal(user_id: int, code: str, message: str, request: str) -> Notification:
    return Notification(
        user_key(user_id),
        wire.error_frame(code, message, request, event_id=str(uuid.uuid4())),
        "error",
    )


def _offers_directive(transition: Transition) -> dict[str, str]:
    if transition.event is EventType.ACCEPTED:
        return {OFFERS_HEADER: PAUSE_OFFERS}
    if transition.after.status in (Status.COMPLETED, Status.CANCELLED):
        return {OFFERS_HEADER: RESUME_OFFERS}
    return {}
