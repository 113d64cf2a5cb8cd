"""Commands: what the gateway accepts from a client, and what the dispatcher accepts as a body."""

from __future__ import annotations

import time
import uuid
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from shared.commands import (
    COMMAND_TYPES,
    CREATE_TRIP,
    DECLINE_TRIP,
    MAX_ADDRESS_LENGTH,
    UPDATE_LOCATION,
    UPDATE_TRIP,
    Command,
    CreateTrip,
    DeclineTrip,
    InvalidCommand,
    UpdateTrip,
    check_reports_location,
    decode_command,
    new_command,
    new_location,
    parse_location,
)
from shared.locations import Location, Point
from shared.trips import Status
from shared.wire import ErrorCode, FrameError

RIDER_ID = 7
DRIVER_ID = 42
ADDRESSES = {"pick_up_address": "123 Main Street", "drop_off_address": "456 South Street"}
TRIP_ID = "6f1b7a43-1d0c-4e38-9a3e-1df27d7f2b0a"
PICK_UP = {"lat": 52.378901, "lng": 4.900581}
DROP_OFF = {"lat": 52.37308, "lng": 4.892453}


def refused(command_type: str, user_id: int, group: str, data: Any) -> FrameError:
    with pytest.raises(FrameError) as refusal:
        new_command(command_type, user_id, group, data)
    assert refusal.value.message
    return refusal.value


# create.trip


def test_a_rider_creates_a_trip_command() -> None:
    before = time.time()

    command = new_command(CREATE_TRIP, RIDER_ID, "rider", dict(ADDRESSES))

    assert command.type == "create.trip"
    assert command.user_id == RIDER_ID
    assert command.data == CreateTrip("123 Main Street", "456 South Street")
    assert isinstance(command.id, uuid.UUID)
    assert before <= command.sent_at <= time.time()


def test_every_command_gets_its_own_id() -> None:
    first = new_command(CREATE_TRIP, RIDER_ID, "rider", dict(ADDRESSES))
    second = new_command(CREATE_TRIP, RIDER_ID, "rider", dict(ADDRESSES))

    assert first.id != second.id


@pytest.mark.parametrize("rider", [RIDER_ID, str(RIDER_ID), {"id": RIDER_ID, "username": "x"}])
def test_the_rider_may_name_themselves(rider: Any) -> None:
    command = new_command(CREATE_TRIP, RIDER_ID, "rider", {**ADDRESSES, "rider": rider})

    assert command.user_id == RIDER_ID


@pytest.mark.parametrize(
    "rider", [RIDER_ID + 1, str(RIDER_ID + 1), {"id": RIDER_ID + 1}, "me", True, {"name": "x"}]
)
def test_a_rider_cannot_request_a_trip_for_someone_else(rider: Any) -> None:
    refusal = refused(CREATE_TRIP, RIDER_ID, "rider", {**ADDRESSES, "rider": rider})

    assert refusal.code == ErrorCode.FORBIDDEN
    assert refusal.request == "create.trip"


def test_a_driver_cannot_create_a_trip() -> None:
    refusal = refused(CREATE_TRIP, DRIVER_ID, "driver", dict(ADDRESSES))

    assert refusal.code == "forbidden"
    assert refusal.request == "create.trip"


@pytest.mark.parametrize("field", ["pick_up_address", "drop_off_address"])
@pytest.mark.parametrize(
    "value",
    [
        None,
        "",
        "   ",
        "\t\n",
        12,
        ["1 Main St"],
        {"street": "Main"},
        "a" * (MAX_ADDRESS_LENGTH + 1),
    ],
)
def test_addresses_must_be_non_empty_text_of_bounded_length(field: str, value: Any) -> None:
    refusal = refused(CREATE_TRIP, RIDER_ID, "rider", {**ADDRESSES, field: value})

    assert refusal.code == ErrorCode.INVALID_DATA == "invalid_data"
    assert field in refusal.message
    assert refusal.request == "create.trip"


@pytest.mark.parametrize("field", ["pick_up_address", "drop_off_address"])
def test_an_address_may_not_be_left_out(field: str) -> None:
    data = dict(ADDRESSES)
    del data[field]

    refusal = refused(CREATE_TRIP, RIDER_ID, "rider", data)

    assert refusal.code == "invalid_data"
    assert field in refusal.message


def test_an_address_may_not_hold_a_nul_character() -> None:
    refusal = refused(CREATE_TRIP, RIDER_ID, "rider", {**ADDRESSES, "pick_up_address": "1\x00 St"})

    assert refusal.code == "invalid_data"
    assert "NUL" in refusal.message


def test_an_address_of_the_maximum_length_is_accepted() -> None:
    longest = "a" * MAX_ADDRESS_LENGTH

    command = new_command(
        CREATE_TRIP, RIDER_ID, "rider", {**ADDRESSES, "drop_off_address": longest}
    )

    assert isinstance(command.data, CreateTrip)
    assert command.data.drop_off_address == longest


@pytest.mark.parametrize("data", [None, [], "123 Main Street", 5])
def test_data_must_be_an_object(data: Any) -> None:
    refusal = refused(CREATE_TRIP, RIDER_ID, "rider", data)

    assert refusal.code == "invalid_data"


def test_an_unknown_command_type_is_refused() -> None:
    refusal = refused("delete.trip", RIDER_ID, "rider", dict(ADDRESSES))

    assert refusal.code == ErrorCode.UNKNOWN_TYPE
    assert refusal.request == "delete.trip"


# create.trip with points


def test_a_rider_may_give_pick_up_and_drop_off_points() -> None:
    data = {**ADDRESSES, "pick_up": PICK_UP, "drop_off": DROP_OFF}

    command = new_command(CREATE_TRIP, RIDER_ID, "rider", data)

    assert command.data == CreateTrip(
        "123 Main Street",
        "456 South Street",
        pick_up=Point(52.378901, 4.900581),
        drop_off=Point(52.37308, 4.892453),
    )


@pytest.mark.parametrize("given_as", ["absent", "null"])
def test_points_are_optional(given_as: str) -> None:
    data = dict(ADDRESSES) if given_as == "absent" else {**ADDRESSES, "pick_up": None}

    command = new_command(CREATE_TRIP, RIDER_ID, "rider", {**data, "drop_off": DROP_OFF})

    assert isinstance(command.data, CreateTrip)
    assert command.data.pick_up is None
    assert command.data.drop_off == Point(52.37308, 4.892453)


@pytest.mark.parametrize("field", ["pick_up", "drop_off"])
@pytest.mark.parametrize(
    ("value", "named"),
    [
        ({"lat": 91, "lng": 4.9}, "lat"),
        ({"lat": 52.3, "lng": -181}, "lng"),
        ({"lat": "52.3", "lng": 4.9}, "lat"),
        ({"lat": True, "lng": 4.9}, "lat"),
        ({"lat": 52.3, "lng": {}}, "lng"),
        ({"lat": float("inf"), "lng": 4.9}, "lat"),
        ({"lat": 52.3}, "lng"),
        ({}, "lat"),
        ("52.3,4.9", None),
        ([52.3, 4.9], None),
        (True, None),
    ],
)
def test_a_bad_point_is_refused_naming_the_field(field: str, value: Any, named: str | None) -> None:
    refusal = refused(CREATE_TRIP, RIDER_ID, "rider", {**ADDRESSES, field: value})

    assert refusal.code == ErrorCode.INVALID_DATA
    assert refusal.request == "create.trip"
    assert (f'"{field}.{named}"' if named else f'"{field}"') in refusal.message


hostile = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(),
    st.text(max_size=5),
    st.lists(st.floats(), max_size=2),
    st.dictionaries(
        st.sampled_from(["lat", "lng", "x"]),
        st.one_of(st.floats(), st.integers(), st.text(max_size=3), st.booleans(), st.none()),
    ),
)


@given(pick_up=hostile)
def test_whatever_a_client_sends_as_a_point_is_a_point_on_the_map_or_refused(
    pick_up: Any,
) -> None:
    try:
        command = new_command(CREATE_TRIP, RIDER_ID, "rider", {**ADDRESSES, "pick_up": pick_up})
    except FrameError as refusal:
        assert refusal.code == ErrorCode.INVALID_DATA
        assert '"pick_up' in refusal.message
        return
    assert isinstance(command.data, CreateTrip)
    point = command.data.pick_up
    assert point is None or (-90 <= point.lat <= 90 and -180 <= point.lng <= 180)
    assert decode_command(command.encode()) == command


# update.location: validated by the gateway, never published to the dispatcher


def test_update_location_is_no_command_for_the_dispatcher() -> None:
    assert UPDATE_LOCATION == "update.location"
    assert UPDATE_LOCATION not in COMMAND_TYPES


def test_a_driver_reports_their_location() -> None:
    data = {"lat": 52.37, "lng": 4.89, "heading": 90, "speed_mps": 8.5}

    assert new_location("driver", data) == Location(Point(52.37, 4.89), 90.0, 8.5)
    assert parse_location({"lat": 52.37, "lng": 4.89}) == Location(Point(52.37, 4.89))


def test_a_rider_may_not_report_a_location() -> None:
    with pytest.raises(FrameError) as refusal:
        new_location("rider", {"lat": 52.37, "lng": 4.89})

    assert refusal.value.code == ErrorCode.FORBIDDEN
    assert refusal.value.message == "only drivers report their location"
    assert refusal.value.request == "update.location"


def test_only_drivers_pass_the_location_check() -> None:
    check_reports_location("driver")
    for group in ("rider", "", "admin"):
        with pytest.raises(FrameError):
            check_reports_location(group)


@pytest.mark.parametrize(
    ("data", "named"),
    [
        ({"lat": 91, "lng": 4.89}, "lat"),
        ({"lat": 52.37, "lng": "4.89"}, "lng"),
        ({"lat": 52.37, "lng": 4.89, "heading": 361}, "heading"),
        ({"lat": 52.37, "lng": 4.89, "speed_mps": -0.5}, "speed_mps"),
        ({"lng": 4.89}, "lat"),
        (None, "data"),
        ([52.37, 4.89], "data"),
    ],
)
def test_a_bad_location_is_refused_naming_the_field(data: Any, named: str) -> None:
    with pytest.raises(FrameError) as refusal:
        new_location("driver", data)

    assert refusal.value.code == ErrorCode.INVALID_DATA
    assert refusal.value.request == "update.location"
    assert f'"{named}"' in refusal.value.message


def test_the_location_parser_names_the_request_it_is_given() -> None:
    with pytest.raises(FrameError) as refusal:
        parse_location({"lat": 100, "lng": 0}, request="driver.location")

    assert refusal.value.request == "driver.location"


# update.trip


def update_data(status: str, **extra: Any) -> dict[str, Any]:
    return {"id": TRIP_ID, "status": status, **ADDRESSES, **extra}


@pytest.mark.parametrize("status", ["STARTED", "IN_PROGRESS", "COMPLETED"])
def test_a_driver_moves_a_trip_on(status: str) -> None:
    command = new_command(UPDATE_TRIP, DRIVER_ID, "driver", update_data(status))

    assert command.type == "update.trip"
    assert command.user_id == DRIVER_ID
    assert command.data == UpdateTrip(uuid.UUID(TRIP_ID), Status(status))


def test_a_rider_cancels_a_trip() -> None:
    command = new_command(UPDATE_TRIP, RIDER_ID, "rider", update_data("CANCELLED"))

    assert command.data == UpdateTrip(uuid.UUID(TRIP_ID), Status.CANCELLED)


@pytest.mark.parametrize(
    "driver", [DRIVER_ID, str(DRIVER_ID), {"id": DRIVER_ID, "username": "driver@example.com"}]
)
def test_the_accepting_driver_may_name_themselves(driver: Any) -> None:
    command = new_command(UPDATE_TRIP, DRIVER_ID, "driver", update_data("STARTED", driver=driver))

    assert isinstance(command.data, UpdateTrip)
    assert command.data.status is Status.STARTED


@pytest.mark.parametrize("driver", [DRIVER_ID + 1, str(DRIVER_ID + 1), {"id": DRIVER_ID + 1}])
def test_a_driver_cannot_accept_a_trip_for_another_driver(driver: Any) -> None:
    refusal = refused(UPDATE_TRIP, DRIVER_ID, "driver", update_data("STARTED", driver=driver))

    assert refusal.code == "forbidden"
    assert refusal.request == "update.trip"


@pytest.mark.parametrize("trip_id", [None, "", "not-a-uuid", 12, TRIP_ID[:-1], {"id": TRIP_ID}])
def test_update_needs_the_trips_uuid(trip_id: Any) -> None:
    data = update_data("STARTED")
    data["id"] = trip_id

    refusal = refused(UPDATE_TRIP, DRIVER_ID, "driver", data)

    assert refusal.code == "invalid_data"
    assert '"id"' in refusal.message
    assert refusal.request == "update.trip"


def test_update_without_an_id_is_refused() -> None:
    refusal = refused(UPDATE_TRIP, DRIVER_ID, "driver", {"status": "STARTED"})

    assert refusal.code == "invalid_data"


@pytest.mark.parametrize("status", [None, "", "started", "DONE", 3, ["STARTED"]])
def test_update_needs_a_known_status(status: Any) -> None:
    refusal = refused(UPDATE_TRIP, DRIVER_ID, "driver", update_data("STARTED") | {"status": status})

    assert refusal.code == "invalid_data"
    assert "STARTED, IN_PROGRESS, COMPLETED, CANCELLED" in refusal.message
    assert "REQUESTED" not in refusal.message


def test_a_trip_cannot_be_sent_back_to_requested() -> None:
    refusal = refused(UPDATE_TRIP, DRIVER_ID, "driver", update_data("REQUESTED"))

    assert refusal.code == ErrorCode.INVALID_TRANSITION


# The body the gateway publishes and the dispatcher decodes


@pytest.mark.parametrize(
    "command",
    [
        new_command(CREATE_TRIP, RIDER_ID, "rider", {**ADDRESSES, "rider": RIDER_ID}),
        new_command(
            CREATE_TRIP, RIDER_ID, "rider", {**ADDRESSES, "pick_up": PICK_UP, "drop_off": DROP_OFF}
        ),
        new_command(CREATE_TRIP, RIDER_ID, "rider", {**ADDRESSES, "drop_off": DROP_OFF}),
        new_command(UPDATE_TRIP, DRIVER_ID, "driver", update_data("STARTED", driver=DRIVER_ID)),
        new_command(UPDATE_TRIP, RIDER_ID, "rider", update_data("CANCELLED")),
    ],
    ids=["create", "create-with-points", "create-with-drop-off", "accept", "cancel"],
)
def test_a_command_survives_the_trip_through_the_broker(command: Command) -> None:
    assert decode_command(command.encode()) == command


def test_the_encoded_body_holds_only_validated_fields() -> None:
    command = new_command(
        CREATE_TRIP, RIDER_ID, "rider", {**ADDRESSES, "rider": RIDER_ID, "status": "COMPLETED"}
    )

    body = orjson.loads(command.encode())

    assert body == {
        "id": str(command.id),
        "type": "create.trip",
        "user_id": RIDER_ID,
        "data": ADDRESSES,
        "sent_at": command.sent_at,
        "request_id": None,
        "issued_at": None,
        "session": None,
    }


def test_the_encoded_body_carries_the_points_under_their_names() -> None:
    command = new_command(
        CREATE_TRIP, RIDER_ID, "rider", {**ADDRESSES, "pick_up": PICK_UP, "drop_off": None}
    )

    assert orjson.loads(command.encode())["data"] == {**ADDRESSES, "pick_up": PICK_UP}


def test_a_body_from_before_points_still_decodes() -> None:
    body = orjson.dumps(
        {
            "id": str(uuid.uuid4()),
            "type": "create.trip",
            "user_id": RIDER_ID,
            "data": ADDRESSES,
            "sent_at": 1714564800.0,
        }
    )

    command = decode_command(body)

    assert command.data == CreateTrip("123 Main Street", "456 South Street")


def test_a_request_id_gives_the_same_command_id_for_the_same_user_only() -> None:
    first = new_command(CREATE_TRIP, RIDER_ID, "rider", dict(ADDRESSES), "retry-1")
    again = new_command(CREATE_TRIP, RIDER_ID, "rider", dict(ADDRESSES), "retry-1")
    other_user = new_command(CREATE_TRIP, RIDER_ID + 1, "rider", dict(ADDRESSES), "retry-1")
    other_request = new_command(CREATE_TRIP, RIDER_ID, "rider", dict(ADDRESSES), "retry-2")
    without = new_command(CREATE_TRIP, RIDER_ID, "rider", dict(ADDRESSES))

    assert first.id == again.id
    assert len({first.id, other_user.id, other_request.id, without.id}) == 4
    assert decode_command(first.encode()) == first


def test_a_retry_has_the_fingerprint_of_its_first_sending_and_another_request_not() -> None:
    trip_id = str(uuid.uuid4())
    first = new_command(CREATE_TRIP, RIDER_ID, "rider", dict(ADDRESSES), "ride-1")
    # The same request: sent again, decoded by a worker, or with fields that do not matter.
    again = decode_command(
        new_command(CREATE_TRIP, RIDER_ID, "rider", {**ADDRESSES, "rider": RIDER_ID}).encode()
    )
    elsewhere = new_command(
        CREATE_TRIP, RIDER_ID, "rider", {**ADDRESSES, "drop_off_address": "1 Elsewhere Road"}
    )
    with_points = new_command(
        CREATE_TRIP, RIDER_ID, "rider", {**ADDRESSES, "pick_up": {"lat": 52.37, "lng": 4.89}}
    )
    accept = new_command(UPDATE_TRIP, 7, "driver", {"id": trip_id, "status": "STARTED"})
    whole_trip = new_command(
        UPDATE_TRIP, 7, "driver", {"id": trip_id, "status": "STARTED", "driver": 7, "rider": 1}
    )
    cancel = new_command(UPDATE_TRIP, 7, "rider", {"id": trip_id, "status": "CANCELLED"})

    assert first.fingerprint == again.fingerprint
    assert accept.fingerprint == whole_trip.fingerprint
    fingerprints = {first, elsewhere, with_points, accept, cancel}
    assert len({command.fingerprint for command in fingerprints}) == 5


def test_a_body_with_a_request_id_no_client_could_send_is_refused() -> None:
    with pytest.raises(InvalidCommand):
        decode_command(with_field("request_id", "no spaces allowed"))


def valid_body() -> dict[str, Any]:
    return orjson.loads(new_command(CREATE_TRIP, RIDER_ID, "rider", dict(ADDRESSES)).encode())


def with_field(name: str, value: Any) -> bytes:
    return orjson.dumps({**valid_body(), name: value})


def without_field(name: str) -> bytes:
    body = valid_body()
    del body[name]
    return orjson.dumps(body)


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"not json",
        b"\xff\xfe",
        b"{",
        b"[]",
        b"null",
        b'"create.trip"',
        b"42",
        b"{}",
        without_field("id"),
        without_field("type"),
        without_field("user_id"),
        without_field("data"),
        without_field("sent_at"),
        with_field("id", "not-a-uuid"),
        with_field("id", None),
        with_field("type", "delete.trip"),
        with_field("type", None),
        with_field("user_id", "7"),
        with_field("user_id", 7.5),
        with_field("user_id", None),
        with_field("data", None),
        with_field("data", "123 Main Street"),
        with_field("data", {"pick_up_address": "1 Main St"}),
        with_field("data", {**ADDRESSES, "drop_off_address": ""}),
        with_field("data", {**ADDRESSES, "pick_up": {"lat": 91, "lng": 0}}),
        with_field("data", {**ADDRESSES, "drop_off": {"lat": 0}}),
        with_field("data", {**ADDRESSES, "pick_up": [52.3, 4.9]}),
        with_field("sent_at", "yesterday"),
        with_field("sent_at", None),
        with_field("sent_at", [1]),
    ],
)
def test_a_body_that_is_not_a_command_is_refused(body: bytes) -> None:
    with pytest.raises(InvalidCommand):
        decode_command(body)


def test_an_update_body_with_a_bad_trip_id_is_refused() -> None:
    body = orjson.loads(
        new_command(UPDATE_TRIP, DRIVER_ID, "driver", update_data("STARTED")).encode()
    )
    body["data"]["id"] = "not-a-uuid"

    with pytest.raises(InvalidCommand):
        decode_command(orjson.dumps(body))


@pytest.mark.parametrize("command_id", [123, [1, 2]], ids=["number", "array"])
def test_a_body_whose_id_is_not_text_is_refused(command_id: Any) -> None:
    with pytest.raises(InvalidCommand):
        decode_command(with_field("id", command_id))


def test_a_body_whose_user_id_is_a_boolean_is_refused() -> None:
    with pytest.raises(InvalidCommand):
        decode_command(with_field("user_id", True))


def test_a_rider_named_by_a_superscript_digit_is_refused_as_a_frame_error() -> None:
    refusal = refused(CREATE_TRIP, RIDER_ID, "rider", {**ADDRESSES, "rider": "²"})

    assert refusal.code == "forbidden"


# decline.trip


def test_a_driver_declines_an_offer_by_trip_id() -> None:
    command = new_command(DECLINE_TRIP, DRIVER_ID, "driver", {"id": TRIP_ID}, "no-thanks-1")

    assert command.data == DeclineTrip(uuid.UUID(TRIP_ID))
    assert command.trip_id == TRIP_ID
    assert DECLINE_TRIP in COMMAND_TYPES
    assert decode_command(command.encode()) == command


def test_a_rider_declines_nothing() -> None:
    refusal = refused(DECLINE_TRIP, RIDER_ID, "rider", {"id": TRIP_ID})

    assert refusal.code == ErrorCode.FORBIDDEN
    assert refusal.request == DECLINE_TRIP


@pytest.mark.parametrize("data", [{}, {"id": "not-a-uuid"}, {"id": 5}])
def test_a_decline_names_its_trip_by_uuid(data: Any) -> None:
    assert refused(DECLINE_TRIP, DRIVER_ID, "driver", data).code == ErrorCode.INVALID_DATA
