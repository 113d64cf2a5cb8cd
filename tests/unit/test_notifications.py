"""Who is told what when a trip changes, or when a command is refused."""

from __future__ import annotations

import dataclasses
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson

from dispatcher.notifications import (
    Audience,
    Broadcast,
    Notification,
    for_refusal,
    for_transition,
    offers,
)
from dispatcher.publisher import together
from shared import trips
from shared.locations import Point
from shared.topology import (
    CC_HEADER,
    DISTANCES_HEADER,
    DRIVER_OFFERS_KEY,
    EXCLUDE_USER_HEADER,
    SEQ_HEADER,
    SEQS_HEADER,
    TRIP_HEADER,
    VERSION_HEADER,
)
from shared.trips import Status, Transition, Trip
from shared.users import User
from shared.wire import with_seq

OFFER_TTL = 30
# A trip without a pick-up point: every free driver hears of it, by broadcast.
EVERYONE = Audience(broadcast=Broadcast.EVERYONE)
REQUESTED_AT = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
LATER = REQUESTED_AT + timedelta(minutes=1)

RIDER = User(7, "rider@example.com", "Ann", "Rider", "rider", None)
DRIVER = User(42, "driver@example.com", "Bob", "Driver", "driver", None)


def requested() -> Transition:
    return trips.request(uuid.uuid4(), RIDER, "1 Main St", "2 South St", REQUESTED_AT)


def accepted() -> Transition:
    return trips.accept(requested().after, DRIVER, LATER)


def picked_up() -> Transition:
    return trips.advance(accepted().after, DRIVER, Status.IN_PROGRESS, LATER)


def completed() -> Transition:
    return trips.advance(picked_up().after, DRIVER, Status.COMPLETED, LATER)


def frame(notification: Notification) -> dict[str, Any]:
    decoded = orjson.loads(notification.body)
    assert isinstance(decoded, dict)
    return decoded


def by_key(notifications: list[Notification]) -> dict[str, Notification]:
    keyed = {n.routing_key: n for n in notifications}
    assert len(keyed) == len(notifications), "one notification per recipient"
    return keyed


def assert_frames_describe(notifications: list[Notification], trip: Trip) -> None:
    """Every frame is {type, event_id, data}, about the trip as it is now, with one event id."""
    frames = [frame(n) for n in notifications]
    for each in frames:
        assert set(each) == {"type", "event_id", "data"}
        assert each["data"] == trip.payload()
        uuid.UUID(each["event_id"])
    assert len({each["event_id"] for each in frames}) == 1


def test_a_new_trip_is_told_to_its_rider_and_offered_to_drivers() -> None:
    transition = requested()

    notifications = for_transition(transition, EVERYONE, OFFER_TTL)

    told = by_key(notifications)
    assert set(told) == {"user.7", DRIVER_OFFERS_KEY}
    assert frame(told["user.7"])["type"] == "trip.requested"
    assert told["user.7"].ttl_seconds is None
    assert told["user.7"].headers == {}
    offer = told[DRIVER_OFFERS_KEY]
    assert frame(offer)["type"] == "trip.requested"
    assert offer.ttl_seconds == OFFER_TTL
    assert offer.headers == {TRIP_HEADER: str(transition.after.id), VERSION_HEADER: "1"}
    # For no one in particular: not numbered into anyone's sequence, never kept.
    assert offer.user_id is None
    assert told["user.7"].user_id == 7
    assert_frames_describe(notifications, transition.after)


def test_the_offer_lives_as_long_as_configured() -> None:
    told = by_key(for_transition(requested(), EVERYONE, 5))

    assert told[DRIVER_OFFERS_KEY].ttl_seconds == 5


def test_accepting_tells_both_and_withdraws_the_offer() -> None:
    transition = accepted()

    notifications = for_transition(transition, EVERYONE, OFFER_TTL)

    told = by_key(notifications)
    assert set(told) == {"user.7", "user.42", DRIVER_OFFERS_KEY}
    assert frame(told["user.7"])["type"] == "trip.accepted"
    assert told["user.7"].headers == {}
    assert frame(told["user.42"])["type"] == "trip.accepted"
    assert told["user.42"].headers == {}
    assert told["user.42"].user_id == 42
    assert told["user.42"].ttl_seconds is None
    taken = told[DRIVER_OFFERS_KEY]
    assert frame(taken)["type"] == "trip.taken"
    assert taken.ttl_seconds == OFFER_TTL
    # The winner is left out: the gateway does not tell them their own trip was taken.
    assert taken.headers == {
        EXCLUDE_USER_HEADER: "42",
        TRIP_HEADER: str(transition.after.id),
        VERSION_HEADER: "2",
    }
    assert_frames_describe(notifications, transition.after)


def test_the_pick_up_is_told_to_rider_and_driver_only() -> None:
    transition = picked_up()

    notifications = for_transition(transition, EVERYONE, OFFER_TTL)

    told = by_key(notifications)
    assert set(told) == {"user.7", "user.42"}
    assert {frame(n)["type"] for n in notifications} == {"trip.picked_up"}
    assert told["user.42"].headers == {}
    assert all(n.ttl_seconds is None for n in notifications)
    assert_frames_describe(notifications, transition.after)


def test_completing_is_told_to_rider_and_driver() -> None:
    transition = completed()

    notifications = for_transition(transition, EVERYONE, OFFER_TTL)

    told = by_key(notifications)
    assert set(told) == {"user.7", "user.42"}
    assert {frame(n)["type"] for n in notifications} == {"trip.completed"}
    assert told["user.42"].headers == {}
    assert told["user.7"].headers == {}
    assert_frames_describe(notifications, transition.after)


def test_cancelling_a_requested_trip_withdraws_the_offer() -> None:
    transition = trips.cancel(requested().after, RIDER, LATER)

    notifications = for_transition(transition, EVERYONE, OFFER_TTL)

    told = by_key(notifications)
    assert set(told) == {"user.7", DRIVER_OFFERS_KEY}
    assert frame(told["user.7"])["type"] == "trip.cancelled"
    withdrawn = told[DRIVER_OFFERS_KEY]
    assert frame(withdrawn)["type"] == "trip.cancelled"
    assert withdrawn.ttl_seconds == OFFER_TTL
    assert withdrawn.headers == {TRIP_HEADER: str(transition.after.id), VERSION_HEADER: "2"}
    assert_frames_describe(notifications, transition.after)


def test_cancelling_an_accepted_trip_tells_its_driver_and_no_other_driver() -> None:
    transition = trips.cancel(accepted().after, RIDER, LATER)

    notifications = for_transition(transition, EVERYONE, OFFER_TTL)

    told = by_key(notifications)
    # The offer was withdrawn when the trip was taken; other drivers have nothing to drop.
    assert set(told) == {"user.7", "user.42"}
    assert {frame(n)["type"] for n in notifications} == {"trip.cancelled"}
    assert told["user.42"].headers == {}
    assert_frames_describe(notifications, transition.after)


def test_each_transition_has_its_own_event_id() -> None:
    transition = accepted()

    first = frame(for_transition(transition, EVERYONE, OFFER_TTL)[0])["event_id"]
    second = frame(for_transition(transition, EVERYONE, OFFER_TTL)[0])["event_id"]

    assert first != second


def requested_with_pick_up() -> Transition:
    return trips.request(
        uuid.uuid4(), RIDER, "1 Main St", "2 South St", REQUESTED_AT, pick_up=Point(52.37, 4.89)
    )


def test_drivers_chosen_by_distance_are_offered_by_name_in_one_message() -> None:
    transition = requested_with_pick_up()
    audience = Audience([(42, 120.44), (43, 870.0)])

    told = by_key(for_transition(transition, audience, OFFER_TTL))

    # Nobody else hears of it: not drivers whose location is unknown (PROTOCOL D1).
    assert set(told) == {"user.7", "user.42"}
    trip_headers = {TRIP_HEADER: str(transition.after.id), VERSION_HEADER: "1"}
    offer = told["user.42"]
    assert frame(offer)["type"] == "trip.requested"
    assert frame(offer)["data"] == transition.after.payload()
    # The others named ride along in CC; each gateway gives each its own distance.
    assert offer.headers == {
        **trip_headers,
        CC_HEADER: ["user.43"],
        DISTANCES_HEADER: '{"42":120.4,"43":870.0}',
    }
    # Offers by name are still offers: unnumbered, never kept, and they expire.
    assert offer.user_id is None
    assert offer.ttl_seconds == OFFER_TTL


def test_a_taken_trip_is_withdrawn_from_everyone_it_was_offered_to_but_the_winner() -> None:
    transition = trips.accept(requested_with_pick_up().after, DRIVER, LATER)
    audience = Audience([(42, None), (43, None), (44, None)])

    told = by_key(for_transition(transition, audience, OFFER_TTL))

    # user.42 is the winner: told it was accepted, not that it was taken.
    assert set(told) == {"user.7", "user.42", "user.43"}
    assert frame(told["user.42"])["type"] == "trip.accepted"
    taken = told["user.43"]
    assert frame(taken)["type"] == "trip.taken"
    assert taken.user_id is None
    assert taken.headers[CC_HEADER] == ["user.44"]
    assert DISTANCES_HEADER not in taken.headers


def test_a_wider_ring_offers_the_trip_to_the_next_drivers_only() -> None:
    trip = requested_with_pick_up().after

    sent = offers(trip, trips.EventType.REQUESTED, Audience([(44, 4100.0)]), OFFER_TTL)

    assert [n.routing_key for n in sent] == ["user.44"]
    assert sent[0].headers[DISTANCES_HEADER] == '{"44":4100.0}'
    assert CC_HEADER not in sent[0].headers


def test_a_refusal_is_an_error_frame_for_the_user_who_asked() -> None:
    notification = for_refusal(
        42, "trip_unavailable", "this trip is no longer available", "x", "retry-7", "t-1"
    )

    assert notification.routing_key == "user.42"
    # A reply, not a notification of the user's sequence: never numbered, never kept.
    assert notification.user_id is None
    assert notification.ttl_seconds is None
    assert notification.headers == {}
    refusal = frame(notification)
    assert refusal["type"] == "error"
    assert refusal["data"] == {
        "code": "trip_unavailable",
        "message": "this trip is no longer available",
        "request": "x",
        "request_id": "retry-7",
        "trip_id": "t-1",
    }
    uuid.UUID(refusal["event_id"])


def test_refusals_have_distinct_event_ids() -> None:
    first = frame(for_refusal(1, "forbidden", "no", "create.trip"))["event_id"]
    second = frame(for_refusal(1, "forbidden", "no", "create.trip"))["event_id"]

    assert first != second


def numbered(notification: Notification, seq: int) -> Notification:
    """As the notification log stores it (`dispatcher.notification_log`)."""
    return dataclasses.replace(
        notification,
        seq=seq,
        body=with_seq(notification.body, seq),
        headers={**notification.headers, SEQ_HEADER: str(seq)},
    )


def test_what_a_rider_and_a_driver_are_told_alike_goes_as_one_message() -> None:
    rider, driver, taken = for_transition(accepted(), EVERYONE, OFFER_TTL)
    told = [numbered(rider, 5), numbered(driver, 9), taken]

    message, offer = together(told)

    assert offer == taken  # the withdrawal to other drivers: a message of its own
    assert message.routing_key == "user.7"
    assert message.headers == {CC_HEADER: ["user.42"], SEQS_HEADER: '{"7":5,"42":9}'}
    assert (message.seq, message.user_id, message.ttl_seconds) == (None, None, None)
    # Numbered for each user, it is what each one's log keeps.
    assert with_seq(message.body, 5) == told[0].body
    assert with_seq(message.body, 9) == told[1].body


def test_frames_that_differ_are_not_put_together() -> None:
    first = numbered(for_transition(picked_up(), EVERYONE, OFFER_TTL)[0], 3)
    second = numbered(for_transition(completed(), EVERYONE, OFFER_TTL)[0], 4)
    alone = numbered(for_transition(completed(), EVERYONE, OFFER_TTL)[1], 2)

    assert together([first, second, alone]) == [first, second, alone]


def test_one_user_twice_or_other_headers_are_not_put_together() -> None:
    rider, driver, _ = for_transition(accepted(), EVERYONE, OFFER_TTL)
    again = numbered(rider, 6)
    traced = dataclasses.replace(
        numbered(driver, 9), headers={"traceparent": "00-x", SEQ_HEADER: "9"}
    )

    # One message carries one number a user; headers that differ stay with their frame.
    assert together([numbered(rider, 5), again]) == [numbered(rider, 5), again]
    assert together([numbered(rider, 5), traced]) == [numbered(rider, 5), traced]
