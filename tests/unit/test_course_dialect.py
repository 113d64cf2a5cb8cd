"""The course's dialect (PROTOCOL D4, `gateway.live.course_frames`
and `gateway.web.course_forms`): every frame a socket
without the `taxi.v2` subprotocol receives is one the course's own React client
(taxi-react-app v4.0.0) handles as its server would have sent it, and the HTTP forms'
errors come as its forms read them.

Frames are made by the code that makes them (the workers' notifications, the offers'
fan-out, the gateway's replies), and what comes out is run through a model of what
the course's dashboards do with a frame (`RiderDashboard.js`, `DriverDashboard.js`,
`TripCard.js`, `TripMedia.js`).
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest

from dispatcher.notifications import Audience, Broadcast, Notification, for_transition
from gateway.live import course_frames
from gateway.live.course_frames import course_frame
from gateway.live.offers import with_distance
from gateway.web.course_forms import course_form_errors, speaks_course_forms
from shared import trips, wire
from shared.locations import Location, Point, driver_location_frame
from shared.trips import Status, Transition
from shared.users import User

NOW = datetime(2026, 11, 30, 4, 36, 42, 959338, tzinfo=UTC)
ANN = User(1, "ann@example.com", "Ann", "Rider", "rider", None)
DAN = User(2, "dan@example.com", "Dan", "Driver", "driver", "/media/photos/dan.jpg")
EVE = User(3, "eve@example.com", "Eve", "Driver", "driver", None)
# Dan offered by name (with his distance), Eve by broadcast.
AUDIENCE = Audience(named=((DAN.id, 212.4),), broadcast=Broadcast.EVERYONE)


class CourseClientError(Exception):
    """What the course's client would throw (a page error, or a blank page)."""


def rider_dashboard(trips_by_id: dict[str, Any], message: Any) -> None:
    """RiderDashboard.js: upsert `message.data` by id, toast with `trip.driver`, then
    render the current trips (a driver, not REQUESTED or COMPLETED) and the completed
    ones through TripMedia with `otherGroup='driver'`."""
    trip = message["data"]
    trips_by_id[trip["id"]] = trip
    if not isinstance(trip.get("driver"), dict):
        raise CourseClientError("updateToast: trip.driver.first_name of null")
    for shown in trips_by_id.values():
        current = shown["driver"] is not None and shown["status"] not in ("REQUESTED", "COMPLETED")
        if current or shown["status"] == "COMPLETED":
            trip_media(shown, "driver")


def driver_dashboard(trips_by_id: dict[str, Any], message: Any) -> None:
    """DriverDashboard.js: upsert by id, toast with `trip.rider`, render the current
    (a driver, not COMPLETED), requested and completed trips with `otherGroup='rider'`."""
    trip = message["data"]
    trips_by_id[trip["id"]] = trip
    if not isinstance(trip.get("rider"), dict):
        raise CourseClientError("updateToast: trip.rider.first_name of undefined")
    for shown in trips_by_id.values():
        trip_media(shown, "rider")


def trip_media(trip: dict[str, Any], other_group: str) -> None:
    user = trip.get(other_group)
    if not isinstance(user, dict):
        raise CourseClientError(f"TripMedia: user.photo of {user!r}: the page goes blank")
    for key in ("first_name", "last_name"):
        assert isinstance(user[key], str)
    assert user["photo"] is None or user["photo"].startswith("/media/")
    assert isinstance(trip["pick_up_address"], str) and isinstance(trip["status"], str)


def current_trips_of_driver(trips_by_id: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        t for t in trips_by_id.values() if t["driver"] is not None and t["status"] != "COMPLETED"
    ]


def requested_trips(trips_by_id: dict[str, Any]) -> list[dict[str, Any]]:
    return [t for t in trips_by_id.values() if t["status"] == "REQUESTED"]


def as_sent(notification: Notification, seq: int = 7) -> tuple[str, str, bool]:
    """(type, text, numbered) of a notification as a gateway hands it to a socket."""
    numbered = notification.user_id is not None
    body = wire.with_seq(notification.body, seq) if numbered else notification.body
    return notification.frame_type, body.decode(), numbered


def course_message(frame_type: str, text: str, numbered: bool) -> Any:
    translated = course_frame(frame_type, text, numbered)
    return None if translated is None else orjson.loads(translated)


def requested() -> Transition:
    return trips.request(uuid.uuid4(), ANN, "12 Harbour Road", "8 Station Square", NOW)


def later(seconds: int) -> datetime:
    return NOW + timedelta(seconds=seconds)


def sent_to(transition: Transition) -> dict[str, list[tuple[str, str, bool]]]:
    """Each user's frames of one change: `ann`, `dan` (numbered), `offers` (unnumbered,
    to drivers who are not the trip's)."""
    frames: dict[str, list[tuple[str, str, bool]]] = {"ann": [], "dan": [], "offers": []}
    for notification in for_transition(transition, AUDIENCE, offer_ttl_seconds=30):
        if notification.user_id == ANN.id:
            frames["ann"].append(as_sent(notification, seq=transition.after.version))
        elif notification.user_id == DAN.id:
            frames["dan"].append(as_sent(notification))
        else:
            frames["offers"].append(as_sent(notification))
    return frames


# --- a whole trip, as each dashboard sees it ---------------------------------------------


def test_a_trip_driven_to_the_end_reaches_both_dashboards_as_the_course_server_sent_it() -> None:
    ann: dict[str, Any] = {}
    dan: dict[str, Any] = {}
    lifecycle = [requested()]
    lifecycle.append(trips.accept(lifecycle[-1].after, DAN, later(1)))
    lifecycle.append(trips.advance(lifecycle[-1].after, DAN, Status.IN_PROGRESS, later(2)))
    lifecycle.append(trips.advance(lifecycle[-1].after, DAN, Status.COMPLETED, later(3)))
    statuses_ann, statuses_dan = [], []

    for transition in lifecycle:
        frames = sent_to(transition)
        for frame in frames["ann"]:
            message = course_message(*frame)
            if message is not None:
                rider_dashboard(ann, message)
                statuses_ann.append(message["data"]["status"])
        # Dan is offered it by name, with his distance, then told each step.
        offers = [
            (t, with_distance(text.encode(), 212.4), n) for t, text, n in frames["offers"][:1]
        ]
        for frame in [*offers, *frames["dan"]]:
            message = course_message(*frame)
            if message is not None:
                driver_dashboard(dan, message)
                statuses_dan.append(message["data"]["status"])

    # The rider's own request has no driver yet: the course's rider dashboard shows it
    # nowhere and throws on it, so it is not sent.
    assert statuses_ann == ["STARTED", "IN_PROGRESS", "COMPLETED"]
    assert statuses_dan == ["REQUESTED", "STARTED", "IN_PROGRESS", "COMPLETED"]
    (trip,) = ann.values()
    assert trip["status"] == "COMPLETED"
    assert trip["driver"]["first_name"] == "Dan"
    assert dan == ann


def test_every_frame_sent_is_the_course_servers_echo_message_with_the_trip_as_data() -> None:
    accepted = trips.accept(requested().after, DAN, later(1))
    for frame in sent_to(accepted)["ann"]:
        translated = course_frame(*frame)
        assert translated is not None
        message = orjson.loads(translated)

        assert set(message) == {"type", "data"}  # no seq, no event_id
        assert message["type"] == "echo.message"
        assert message["data"] == accepted.after.payload()


def test_an_offer_to_a_driver_is_listed_under_requested_trips() -> None:
    dan: dict[str, Any] = {}
    offered = sent_to(requested())["offers"]
    assert offered

    for frame_type, text, numbered in offered:
        assert frame_type == "trip.requested" and not numbered
        driver_dashboard(dan, course_message(frame_type, text, numbered))

    assert [trip["status"] for trip in requested_trips(dan)] == ["REQUESTED"]
    assert current_trips_of_driver(dan) == []


def test_the_riders_own_request_is_not_sent() -> None:
    (frame,) = sent_to(requested())["ann"]

    assert frame[0] == "trip.requested" and frame[2]
    assert course_frame(*frame) is None


# --- a lost race ---------------------------------------------------------------------------


def test_the_driver_who_lost_is_not_told_as_the_course_server_never_told_him() -> None:
    """`trip.taken` holds the winner's trip: the course's dashboard would list it as the
    loser's current trip. Dropped, his offer stays listed until his page reloads its
    trips (which no longer holds it), as against the course's own server."""
    eve: dict[str, Any] = {}
    request = requested()
    for frame in sent_to(request)["offers"]:
        driver_dashboard(eve, course_message(*frame))
    taken = [f for f in sent_to(trips.accept(request.after, DAN, later(1)))["offers"]]
    assert taken and all(frame_type == "trip.taken" for frame_type, _, _ in taken)

    assert [course_frame(*frame) for frame in taken] == [None] * len(taken)
    assert current_trips_of_driver(eve) == []


def test_the_losers_refusal_is_not_sent() -> None:
    refusal = wire.error_frame(
        "trip_unavailable", "this trip is no longer available", "update.trip", None, "x"
    ).decode()

    assert course_frame("error", refusal, False) is None
    assert course_frame("error", wire.with_seq(refusal.encode(), 3).decode(), True) is None


# --- cancels and timeouts ------------------------------------------------------------------


def test_a_cancel_before_anyone_accepted_is_not_sent() -> None:
    """To the rider it has no driver (the course's rider dashboard throws on it and
    shows it nowhere); to the drivers offered it, the course's dashboard would toast
    it as a new request."""
    waiting = requested().after
    for cancelled in (trips.cancel(waiting, ANN, later(1)), trips.expire(waiting, later(120))):
        frames = sent_to(cancelled)
        assert frames["ann"] and frames["offers"] and not frames["dan"]

        for frame in [*frames["ann"], *frames["offers"]]:
            assert frame[0] == "trip.cancelled"
            assert course_frame(*frame) is None


def test_a_cancel_after_a_driver_accepted_shows_cancelled_on_both_dashboards() -> None:
    accepted = trips.accept(requested().after, DAN, later(1))
    ann: dict[str, Any] = {}
    dan: dict[str, Any] = {}
    for user, dashboard, key in ((ann, rider_dashboard, "ann"), (dan, driver_dashboard, "dan")):
        for transition in (accepted, trips.cancel(accepted.after, ANN, later(2))):
            for frame in sent_to(transition)[key]:
                dashboard(user, course_message(*frame))

    assert [trip["status"] for trip in ann.values()] == ["CANCELLED"]
    assert [trip["status"] for trip in dan.values()] == ["CANCELLED"]


# --- frames whose data is no trip ----------------------------------------------------------


@pytest.mark.parametrize(
    ("frame_type", "text", "numbered"),
    [
        (
            "driver.location",
            driver_location_frame(
                str(uuid.uuid4()), Location(Point(52.37, 4.89), 90.0, 8.5), 1_790_000_000.0
            ).decode(),
            False,
        ),
        ("resync", wire.resync_frame(8).decode(), False),
        (
            "error",
            wire.error_frame("trip_in_progress", "you have a trip", "create.trip").decode(),
            False,
        ),
        ("error", wire.error_frame("invalid_json", "not JSON").decode(), False),
        (
            "trip.withdrawn",
            orjson.dumps(
                {
                    "type": "trip.withdrawn",
                    "data": {"id": str(uuid.uuid4()), "version": 1, "reason": "declined"},
                }
            ).decode(),
            False,
        ),
        (
            "trip.withdrawn",
            orjson.dumps(
                {
                    "type": "trip.withdrawn",
                    "data": {"id": str(uuid.uuid4()), "version": 1, "reason": "expired"},
                }
            ).decode(),
            False,
        ),
        ("surge.pricing", '{"type":"surge.pricing","data":{"factor":2}}', False),
        ("trip.reticulated", '{"seq":4,"type":"trip.reticulated","data":{"id":"x"}}', True),
    ],
)
def test_a_frame_whose_data_is_not_a_trip_is_not_sent(
    frame_type: str, text: str, numbered: bool
) -> None:
    assert course_frame(frame_type, text, numbered) is None


def test_an_echo_is_sent_back_as_it_is() -> None:
    """The course's server echoes an `echo.message` identical to the sender."""
    text = '{"type":"echo.message","data":"hello"}'

    assert course_frame("echo.message", text, False) is text


def test_a_trip_frame_that_holds_no_trip_is_not_sent() -> None:
    for text in ('{"type":"trip.accepted","data":null}', "not json", "[1]"):
        assert course_frame("trip.accepted", text, True) is None


# --- cost ----------------------------------------------------------------------------------


def test_one_frame_put_to_many_sockets_is_translated_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    (offer, *_) = sent_to(requested())["offers"]
    calls = []
    translate = course_frames._translate

    def counted(*args: Any) -> str | None:
        calls.append(args)
        return translate(*args)

    monkeypatch.setattr(course_frames, "_translate", counted)
    first = course_frame(*offer)
    again = [course_frame(*offer) for _ in range(50)]

    assert len(calls) == 1
    assert all(text is first for text in again)
    # A copy of the same text (read back from the log for another socket) is
    # translated again, to the same frame.
    copy = "".join(list(offer[1]))
    assert course_frame(offer[0], copy, offer[2]) == first
    assert len(calls) == 2


def test_the_steps_of_a_trip_are_sent_without_decoding_more_than_once_each() -> None:
    accepted = trips.accept(requested().after, DAN, later(1))
    (frame,) = sent_to(accepted)["ann"]

    assert course_frame(*frame) is course_frame(*frame)


# --- HTTP: the course's forms ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "accept", "course"),
    [
        ("/api/sign_up/", "application/json, text/plain, */*", True),
        ("/api/log_in/", "application/json, text/plain, */*", True),
        ("/api/log_in/", "application/json,text/plain,*/*", True),
        ("/api/sign_up/", "application/json", False),  # our browser client
        ("/api/sign_up/", "*/*", False),  # curl, httpx
        ("/api/sign_up/", None, False),
        ("/api/log_in/", "", False),
        ("/api/trip/", "application/json, text/plain, */*", False),  # reads no error body
        ("/api/token/refresh/", "application/json, text/plain, */*", False),
    ],
)
def test_the_course_form_dialect_is_chosen_by_axios_accept_on_its_forms(
    path: str, accept: str | None, course: bool
) -> None:
    assert speaks_course_forms(path, accept) is course


def test_course_form_errors_name_each_field_or_say_it_for_the_whole_form() -> None:
    assert course_form_errors("check these fields: username", {"username": ("taken",)}) == {
        "username": ["taken"]
    }
    assert course_form_errors("no such account", None) == {"__all__": ["no such account"]}
    assert course_form_errors("too large", None, photo_too_large=True) == {"photo": ["too large"]}
