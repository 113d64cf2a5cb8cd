"""The trip rules in shared.trips: who may change a trip, into what, and what clients see."""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest

from shared import trips
from shared.locations import Point
from shared.trips import EventType, RuleViolation, Status, Trip
from shared.users import User
from shared.wire import ErrorCode

REQUESTED_AT = datetime(2024, 5, 1, 12, 0, 0, tzinfo=UTC)
LATER = REQUESTED_AT + timedelta(minutes=3, microseconds=250)


def make_user(user_id: int, group: str) -> User:
    return User(
        id=user_id,
        username=f"{group}{user_id}@example.com",
        first_name=group.title(),
        last_name=str(user_id),
        group=group,
        photo=f"/media/photos/{user_id}.png" if group == "driver" else None,
    )


RIDER = make_user(1, "rider")
OTHER_RIDER = make_user(2, "rider")
DRIVER = make_user(10, "driver")
OTHER_DRIVER = make_user(11, "driver")


def requested_trip() -> Trip:
    return trips.request(uuid.uuid4(), RIDER, "1 Main St", "2 South St", REQUESTED_AT).after


def trip_in(status: Status) -> Trip:
    """A trip of RIDER in the given status; DRIVER holds it unless it is REQUESTED."""
    trip = requested_trip()
    driver = None if status is Status.REQUESTED else DRIVER
    return dataclasses.replace(trip, status=status, driver=driver)


def refusal_code(change: Callable[..., object], *args: object) -> str:
    with pytest.raises(RuleViolation) as refused:
        change(*args)
    assert refused.value.message
    return refused.value.code


# request


def test_a_rider_requests_a_trip() -> None:
    trip_id = uuid.uuid4()

    transition = trips.request(trip_id, RIDER, "1 Main St", "2 South St", REQUESTED_AT)

    assert transition.before is None
    assert transition.event is EventType.REQUESTED
    assert transition.after == Trip(
        id=trip_id,
        created=REQUESTED_AT,
        updated=REQUESTED_AT,
        pick_up_address="1 Main St",
        drop_off_address="2 South St",
        status=Status.REQUESTED,
        rider=RIDER,
        driver=None,
        version=1,
        cancel_reason=None,
    )


def test_a_driver_cannot_request_a_trip() -> None:
    code = refusal_code(trips.request, uuid.uuid4(), DRIVER, "a", "b", REQUESTED_AT)

    assert code == ErrorCode.FORBIDDEN == "forbidden"


@pytest.mark.parametrize("status", [Status.REQUESTED, Status.STARTED, Status.IN_PROGRESS])
def test_a_rider_with_a_live_trip_cannot_request_another(status: Status) -> None:
    code = refusal_code(trips.request, uuid.uuid4(), RIDER, "a", "b", LATER, trip_in(status))

    assert code == ErrorCode.TRIP_IN_PROGRESS == "trip_in_progress"


def test_live_statuses_are_those_of_a_trip_not_yet_over() -> None:
    assert {Status.REQUESTED, Status.STARTED, Status.IN_PROGRESS} == trips.LIVE_STATUSES


# accept


def test_a_driver_accepts_a_requested_trip() -> None:
    trip = requested_trip()

    transition = trips.accept(trip, DRIVER, LATER)

    assert transition.before == trip
    assert transition.event is EventType.ACCEPTED
    assert transition.after == dataclasses.replace(
        trip, status=Status.STARTED, driver=DRIVER, updated=LATER, version=2
    )
    assert transition.after.created == REQUESTED_AT


def test_accepting_leaves_the_trip_given_unchanged() -> None:
    trip = requested_trip()

    trips.accept(trip, DRIVER, LATER)

    assert trip.status is Status.REQUESTED
    assert trip.driver is None


def test_a_rider_cannot_accept_a_trip() -> None:
    assert refusal_code(trips.accept, requested_trip(), OTHER_RIDER, LATER) == "forbidden"


@pytest.mark.parametrize(
    "status", [Status.STARTED, Status.IN_PROGRESS, Status.COMPLETED, Status.CANCELLED]
)
def test_only_a_requested_trip_can_be_accepted(status: Status) -> None:
    code = refusal_code(trips.accept, trip_in(status), OTHER_DRIVER, LATER)

    assert code == ErrorCode.TRIP_UNAVAILABLE == "trip_unavailable"


# advance


def test_the_driver_picks_up_then_drops_off_the_rider() -> None:
    started = trip_in(Status.STARTED)

    picked_up = trips.advance(started, DRIVER, Status.IN_PROGRESS, LATER)
    dropped_off = trips.advance(picked_up.after, DRIVER, Status.COMPLETED, LATER + timedelta(1))

    assert picked_up.event is EventType.PICKED_UP
    assert picked_up.before == started
    assert picked_up.after.status is Status.IN_PROGRESS
    assert picked_up.after.updated == LATER
    assert picked_up.after.driver == DRIVER
    assert dropped_off.event is EventType.COMPLETED
    assert dropped_off.after.status is Status.COMPLETED
    assert dropped_off.after.updated == LATER + timedelta(1)
    assert dropped_off.after.driver == DRIVER


@pytest.mark.parametrize("status", [Status.IN_PROGRESS, Status.COMPLETED])
def test_another_driver_cannot_move_a_trip_on(status: Status) -> None:
    before = Status.STARTED if status is Status.IN_PROGRESS else Status.IN_PROGRESS

    assert refusal_code(trips.advance, trip_in(before), OTHER_DRIVER, status, LATER) == "forbidden"


def test_the_rider_cannot_move_their_trip_on() -> None:
    code = refusal_code(trips.advance, trip_in(Status.STARTED), RIDER, Status.IN_PROGRESS, LATER)

    assert code == "forbidden"


def test_nobody_moves_on_a_trip_without_a_driver() -> None:
    code = refusal_code(trips.advance, trip_in(Status.REQUESTED), DRIVER, Status.IN_PROGRESS, LATER)

    assert code == "forbidden"


@pytest.mark.parametrize(
    ("before", "asked"),
    [
        (Status.STARTED, Status.COMPLETED),  # skipping the pick-up
        (Status.STARTED, Status.STARTED),
        (Status.IN_PROGRESS, Status.IN_PROGRESS),
        (Status.IN_PROGRESS, Status.STARTED),  # going back
        (Status.COMPLETED, Status.IN_PROGRESS),
        (Status.COMPLETED, Status.COMPLETED),
        (Status.CANCELLED, Status.IN_PROGRESS),
        (Status.STARTED, Status.REQUESTED),
    ],
)
def test_the_driver_moves_a_trip_one_step_forward_only(before: Status, asked: Status) -> None:
    code = refusal_code(trips.advance, trip_in(before), DRIVER, asked, LATER)

    assert code == ErrorCode.INVALID_TRANSITION == "invalid_transition"


# cancel


@pytest.mark.parametrize("status", [Status.REQUESTED, Status.STARTED])
def test_the_rider_cancels_a_trip_that_has_not_begun(status: Status) -> None:
    trip = trip_in(status)

    transition = trips.cancel(trip, RIDER, LATER)

    assert transition.event is EventType.CANCELLED
    assert transition.before == trip
    assert transition.after == dataclasses.replace(
        trip, status=Status.CANCELLED, updated=LATER, version=2, cancel_reason="rider"
    )


@pytest.mark.parametrize("status", [Status.IN_PROGRESS, Status.COMPLETED, Status.CANCELLED])
def test_a_trip_under_way_or_over_cannot_be_cancelled(status: Status) -> None:
    assert refusal_code(trips.cancel, trip_in(status), RIDER, LATER) == "invalid_transition"


@pytest.mark.parametrize("someone", [OTHER_RIDER, DRIVER, OTHER_DRIVER])
def test_only_the_trips_rider_cancels_it(someone: User) -> None:
    assert refusal_code(trips.cancel, trip_in(Status.STARTED), someone, LATER) == "forbidden"


# expire: nobody accepted in time


def test_an_unaccepted_request_expires_as_cancelled_for_want_of_a_driver() -> None:
    trip = requested_trip()

    transition = trips.expire(trip, LATER)

    assert transition.event is EventType.CANCELLED
    assert transition.before == trip
    assert transition.after == dataclasses.replace(
        trip, status=Status.CANCELLED, updated=LATER, version=2, cancel_reason="no_driver"
    )
    assert transition.after.payload()["cancel_reason"] == "no_driver"


@pytest.mark.parametrize(
    "status", [Status.STARTED, Status.IN_PROGRESS, Status.COMPLETED, Status.CANCELLED]
)
def test_only_a_requested_trip_expires(status: Status) -> None:
    assert refusal_code(trips.expire, trip_in(status), LATER) == "invalid_transition"


# driver lost: a trip under way whose driver vanished ends, and its rider is free again


@pytest.mark.parametrize("status", [Status.STARTED, Status.IN_PROGRESS])
def test_a_trip_under_way_whose_driver_is_lost_is_cancelled(status: Status) -> None:
    trip = trip_in(status)

    transition = trips.driver_lost(trip, LATER)

    assert transition.event is EventType.CANCELLED
    assert transition.before == trip
    assert transition.after == dataclasses.replace(
        trip, status=Status.CANCELLED, updated=LATER, version=2, cancel_reason="driver_lost"
    )
    assert transition.after.payload()["cancel_reason"] == "driver_lost"
    # The driver stays named, so they are told too.
    assert transition.after.driver == DRIVER


@pytest.mark.parametrize("status", [Status.REQUESTED, Status.COMPLETED, Status.CANCELLED])
def test_only_a_trip_under_way_can_lose_its_driver(status: Status) -> None:
    assert refusal_code(trips.driver_lost, trip_in(status), LATER) == "invalid_transition"


def test_a_rider_whose_driver_was_lost_may_request_again_at_once() -> None:
    lost = trips.driver_lost(trip_in(Status.IN_PROGRESS), LATER).after

    assert lost.status not in trips.LIVE_STATUSES
    again = trips.request(uuid.uuid4(), RIDER, "1 Main St", "2 South St", LATER, live_trip=None)
    assert again.after.status is Status.REQUESTED


# offered: a driver accepts only what was offered to them


def test_a_driver_who_was_not_offered_the_trip_cannot_accept_it() -> None:
    trip = requested_trip()

    assert refusal_code(trips.accept, trip, DRIVER, LATER, False) == "trip_unavailable"
    code = refusal_code(trips.update, trip, DRIVER, Status.STARTED, LATER, False)
    assert code == "trip_unavailable"


def test_a_driver_who_was_offered_the_trip_accepts_it() -> None:
    transition = trips.update(requested_trip(), DRIVER, Status.STARTED, LATER, offered=True)

    assert transition.after.driver == DRIVER


def test_a_rider_accepting_is_forbidden_whether_or_not_anything_was_offered() -> None:
    code = refusal_code(trips.accept, requested_trip(), RIDER, LATER, False)

    assert code == "forbidden"


# version: one more for every change


def test_every_change_adds_one_to_the_version() -> None:
    requested = requested_trip()
    accepted = trips.accept(requested, DRIVER, LATER).after
    picked_up = trips.advance(accepted, DRIVER, Status.IN_PROGRESS, LATER).after
    completed = trips.advance(picked_up, DRIVER, Status.COMPLETED, LATER).after

    versions = [trip.version for trip in (requested, accepted, picked_up, completed)]

    assert versions == [1, 2, 3, 4]
    assert {trip.cancel_reason for trip in (requested, accepted, picked_up, completed)} == {None}


def test_a_cancel_after_acceptance_is_version_three() -> None:
    accepted = trips.accept(requested_trip(), DRIVER, LATER).after

    cancelled = trips.cancel(accepted, RIDER, LATER).after

    assert (cancelled.version, cancelled.cancel_reason) == (3, "rider")


# update: the status asked for picks the rule


def test_update_to_started_accepts_a_requested_trip() -> None:
    transition = trips.update(requested_trip(), DRIVER, Status.STARTED, LATER)

    assert transition.event is EventType.ACCEPTED
    assert transition.after.driver == DRIVER
    assert transition.after.status is Status.STARTED


def test_a_second_driver_asking_for_a_taken_trip_finds_it_unavailable() -> None:
    taken = trips.update(requested_trip(), DRIVER, Status.STARTED, LATER).after

    code = refusal_code(trips.update, taken, OTHER_DRIVER, Status.STARTED, LATER)

    assert code == "trip_unavailable"


@pytest.mark.parametrize("status", [Status.IN_PROGRESS, Status.COMPLETED, Status.CANCELLED])
def test_a_driver_asking_for_a_trip_no_longer_offered_finds_it_unavailable(
    status: Status,
) -> None:
    code = refusal_code(trips.update, trip_in(status), OTHER_DRIVER, Status.STARTED, LATER)

    assert code == "trip_unavailable"


def test_the_assigned_driver_asking_started_again_is_an_invalid_transition() -> None:
    code = refusal_code(trips.update, trip_in(Status.STARTED), DRIVER, Status.STARTED, LATER)

    assert code == "invalid_transition"


def test_a_rider_asking_started_cannot_accept_their_own_trip() -> None:
    code = refusal_code(trips.update, requested_trip(), RIDER, Status.STARTED, LATER)

    assert code == "forbidden"


def test_update_moves_the_trip_on_for_its_driver() -> None:
    transition = trips.update(trip_in(Status.STARTED), DRIVER, Status.IN_PROGRESS, LATER)

    assert transition.event is EventType.PICKED_UP
    assert transition.after.status is Status.IN_PROGRESS


def test_update_skipping_a_step_is_an_invalid_transition() -> None:
    code = refusal_code(trips.update, trip_in(Status.STARTED), DRIVER, Status.COMPLETED, LATER)

    assert code == "invalid_transition"


def test_update_to_cancelled_is_the_riders_cancel() -> None:
    transition = trips.update(trip_in(Status.STARTED), RIDER, Status.CANCELLED, LATER)

    assert transition.event is EventType.CANCELLED
    assert transition.after.status is Status.CANCELLED
    assert transition.after.payload()["cancel_reason"] == "rider"


def test_the_driver_cannot_cancel_through_update() -> None:
    code = refusal_code(trips.update, trip_in(Status.STARTED), DRIVER, Status.CANCELLED, LATER)

    assert code == "forbidden"


# payload: the course's nested trip


def test_payload_of_a_requested_trip() -> None:
    trip_id = uuid.uuid4()
    trip = trips.request(trip_id, RIDER, "1 Main St", "2 South St", REQUESTED_AT).after

    assert trip.payload() == {
        "id": str(trip_id),
        "created": "2024-05-01T12:00:00Z",
        "updated": "2024-05-01T12:00:00Z",
        "pick_up_address": "1 Main St",
        "drop_off_address": "2 South St",
        "pick_up": None,
        "drop_off": None,
        "status": "REQUESTED",
        "version": 1,
        "cancel_reason": None,
        "driver": None,
        "rider": {
            "id": 1,
            "username": "rider1@example.com",
            "first_name": "Rider",
            "last_name": "1",
            "group": "rider",
            "photo": None,
        },
    }


def test_a_trip_carries_the_riders_points_in_its_payload() -> None:
    pick_up, drop_off = Point(52.378901, 4.900581), Point(52.37308, 4.892453)

    trip = trips.request(
        uuid.uuid4(),
        RIDER,
        "1 Main St",
        "2 South St",
        REQUESTED_AT,
        pick_up=pick_up,
        drop_off=drop_off,
    ).after

    assert (trip.pick_up, trip.drop_off) == (pick_up, drop_off)
    assert trip.payload()["pick_up"] == {"lat": 52.378901, "lng": 4.900581}
    assert trip.payload()["drop_off"] == {"lat": 52.37308, "lng": 4.892453}


def test_a_trip_keeps_its_points_through_every_change() -> None:
    pick_up = Point(-33.8568, 151.2153)
    trip = trips.request(
        uuid.uuid4(), RIDER, "1 Main St", "2 South St", REQUESTED_AT, pick_up=pick_up
    ).after

    accepted = trips.accept(trip, DRIVER, LATER).after
    cancelled = trips.cancel(accepted, RIDER, LATER).after

    for changed in (accepted, cancelled):
        assert changed.payload()["pick_up"] == {"lat": -33.8568, "lng": 151.2153}
        assert changed.payload()["drop_off"] is None


def test_payload_of_an_accepted_trip_names_its_driver() -> None:
    accepted = trips.accept(requested_trip(), DRIVER, LATER).after

    payload = accepted.payload()

    assert payload["status"] == "STARTED"
    assert payload["version"] == 2
    assert payload["cancel_reason"] is None
    assert payload["created"] == "2024-05-01T12:00:00Z"
    assert payload["updated"] == "2024-05-01T12:03:00.000250Z"
    assert payload["driver"] == {
        "id": 10,
        "username": "driver10@example.com",
        "first_name": "Driver",
        "last_name": "10",
        "group": "driver",
        "photo": "/media/photos/10.png",
    }
    assert payload["rider"]["id"] == 1


def test_payload_never_shows_whether_a_user_is_active() -> None:
    inactive_rider = dataclasses.replace(RIDER, is_active=False)
    trip = trips.request(uuid.uuid4(), inactive_rider, "a", "b", REQUESTED_AT).after

    assert set(trip.payload()["rider"]) == {
        "id",
        "username",
        "first_name",
        "last_name",
        "group",
        "photo",
    }


# decline (PROTOCOL D2): one driver's offer withdrawn, the trip unchanged


def test_a_driver_declines_an_offer_and_the_trip_stays_as_it_was() -> None:
    trip = requested_trip()

    withdrawal = trips.decline(trip, DRIVER, offered=True)

    assert withdrawal.trip == trip
    assert withdrawal.driver_id == DRIVER.id
    assert withdrawal.payload() == {"id": str(trip.id), "version": 1, "reason": "declined"}


@pytest.mark.parametrize("status", [s for s in Status if s is not Status.REQUESTED])
def test_a_trip_no_longer_requested_cannot_be_declined(status: Status) -> None:
    assert refusal_code(trips.decline, trip_in(status), OTHER_DRIVER, True) == "trip_unavailable"


def test_only_an_offer_open_to_the_driver_is_declined() -> None:
    assert refusal_code(trips.decline, requested_trip(), DRIVER, False) == "trip_unavailable"


def test_a_rider_declines_nothing() -> None:
    assert refusal_code(trips.decline, requested_trip(), RIDER, True) == "forbidden"


def test_an_expired_offer_is_withdrawn_with_its_reason() -> None:
    trip = requested_trip()

    withdrawal = trips.offer_expired(trip, DRIVER.id)

    assert withdrawal.payload()["reason"] == "expired"
    assert refusal_code(trips.offer_expired, trip_in(Status.STARTED), DRIVER.id)
