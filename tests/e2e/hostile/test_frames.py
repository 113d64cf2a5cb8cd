"""Hostile frames, property-tested against the real gateway over real sockets: every bad
frame gets an `error` frame with a documented code and a message that says what was
wrong, and the socket keeps working; text that is accepted is stored verbatim."""

from __future__ import annotations

import uuid
from typing import Any

import asyncpg
import httpx
import hypothesis
import orjson
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from shared.locations import location_from
from shared.settings import Settings
from shared.wire import FrameError
from tests.clients import Account, about, connect, receive_until
from tests.e2e.hostile.common import (
    ECHO,
    FEW,
    KNOWN_TYPES,
    LAST_SEQ,
    MAX_ADDRESS_LENGTH,
    PROPERTY,
    SQL_SHAPED,
    STATUSES,
    UNICODE_EDGES,
    EventLoopThread,
    _send_then_echo,
    as_text,
    assert_error,
    blank_strings,
    exchange,
    is_json,
    json_non_objects,
    json_values,
    non_strings,
    sql_or_unicode,
)

# -- WebSocket frames -------------------------------------------------------------------


@PROPERTY
@given(text=st.text(max_size=300) | st.sampled_from(SQL_SHAPED))
@example(text="")
@example(text="{")
@example(text="{'type': 'echo.message', 'data': 'single quotes'}")
@example(text='{"type": "echo.message", "data": "trailing comma",}')
@example(text='{"type": "echo.message", "data": NaN}')
@example(text='{"type": "echo.message", "data": Infinity}')
@example(text='{"type": "echo.message", "data": 1e400}')
@example(text='{"type": "echo.message", "data": "\\ud800 lone surrogate"}')
@example(text='{"type": "echo.message", "data": "\\udc00\\ud800 reversed pair"}')
@example(text='\ufeff{"type": "echo.message", "data": "after a BOM"}')
@example(text='{"type": "echo.message"} {"type": "echo.message"}')
def test_text_that_is_not_json_gets_invalid_json(
    loop: EventLoopThread, base_url: str, rider: Account, text: str
) -> None:
    hypothesis.assume(not is_json(text))

    answer = exchange(loop, base_url, rider, text)

    assert_error(answer, "invalid_json", "JSON")


@PROPERTY
@given(value=json_non_objects)
@example(value=[{"type": "echo.message", "data": "in an array"}])
@example(value="echo.message")
def test_json_that_is_not_an_object_gets_invalid_frame(
    loop: EventLoopThread, base_url: str, rider: Account, value: Any
) -> None:
    answer = exchange(loop, base_url, rider, as_text(value))

    assert_error(answer, "invalid_frame", "object")


missing = object()


@PROPERTY
@given(
    frame_type=st.just(missing) | non_strings | st.just(""),
    rest=st.dictionaries(st.text(max_size=8).filter(lambda k: k != "type"), json_values),
)
@example(frame_type=["echo.message"], rest={"data": "type in a list"})
@example(frame_type={"type": "echo.message"}, rest={})
@example(frame_type=missing, rest={"TYPE": "echo.message", "data": "wrong case"})
def test_a_frame_without_a_string_type_gets_invalid_frame(
    loop: EventLoopThread, base_url: str, rider: Account, frame_type: Any, rest: dict[str, Any]
) -> None:
    frame = rest if frame_type is missing else {**rest, "type": frame_type}

    answer = exchange(loop, base_url, rider, as_text(frame))

    assert_error(answer, "invalid_frame", "type")


@PROPERTY
@given(
    frame_type=(st.text(min_size=1, max_size=200) | sql_or_unicode).filter(
        lambda t: t not in KNOWN_TYPES
    ),
    data=json_values,
)
@example(frame_type="Echo.Message", data="case matters")
@example(frame_type=" echo.message", data="leading space")
@example(frame_type="echo.message\x00", data="trailing NUL")
@example(frame_type="trip.requested", data={})
@example(frame_type="error", data={})
def test_an_unknown_type_gets_unknown_type_naming_it_verbatim(
    loop: EventLoopThread, base_url: str, rider: Account, frame_type: str, data: Any
) -> None:
    answer = exchange(loop, base_url, rider, as_text({"type": frame_type, "data": data}))

    assert_error(answer, "unknown_type", "echo.message", request=frame_type)


@PROPERTY
@given(
    command=st.sampled_from(["create.trip", "update.trip"]),
    data=st.just(missing) | json_non_objects,
)
def test_a_command_whose_data_is_not_an_object_gets_invalid_data(
    loop: EventLoopThread, base_url: str, rider: Account, command: str, data: Any
) -> None:
    frame = {"type": command} if data is missing else {"type": command, "data": data}

    answer = exchange(loop, base_url, rider, as_text(frame))

    assert_error(answer, "invalid_data", "data", request=command)


bad_addresses = (
    st.just(missing)
    | non_strings
    | blank_strings
    | st.text(min_size=MAX_ADDRESS_LENGTH + 1, max_size=MAX_ADDRESS_LENGTH + 50)
    | st.text(max_size=20).map(lambda t: f"A{t}\x00{t}")
)


@PROPERTY
@given(
    bad_field=st.sampled_from(["pick_up_address", "drop_off_address"]),
    bad_value=bad_addresses,
    good_value=st.text(min_size=1, max_size=50).filter(lambda t: t.strip() and "\x00" not in t),
    extra=st.dictionaries(
        st.text(max_size=8).filter(lambda k: k not in ("pick_up_address", "drop_off_address")),
        json_values,
        max_size=3,
    ),
)
def test_create_trip_with_a_bad_address_gets_invalid_data_naming_it(
    loop: EventLoopThread,
    base_url: str,
    rider: Account,
    bad_field: str,
    bad_value: Any,
    good_value: str,
    extra: dict[str, Any],
) -> None:
    other = "drop_off_address" if bad_field == "pick_up_address" else "pick_up_address"
    data = {**extra, other: good_value, "rider": rider.id}
    if bad_value is not missing:
        data[bad_field] = bad_value

    answer = exchange(loop, base_url, rider, as_text({"type": "create.trip", "data": data}))

    assert_error(answer, "invalid_data", bad_field, request="create.trip")


def names_someone_else(value: Any, user_id: int) -> bool:
    if value is None or (isinstance(value, dict) and "id" in value):
        return False
    return value not in (user_id, str(user_id))


@PROPERTY
@given(other=json_values | st.integers(min_value=1, max_value=2**64 - 1) | sql_or_unicode)
@example(other={"id": 999_999_999})
@example(other="1 OR 1=1")
def test_create_trip_for_another_rider_gets_forbidden(
    loop: EventLoopThread, base_url: str, rider: Account, other: Any
) -> None:
    hypothesis.assume(names_someone_else(other, rider.id))
    data = {"pick_up_address": "A St", "drop_off_address": "B St", "rider": other}

    answer = exchange(loop, base_url, rider, as_text({"type": "create.trip", "data": data}))

    assert_error(answer, "forbidden", "rider", request="create.trip")


def is_uuid(value: Any) -> bool:
    try:
        uuid.UUID(str(value))
    except ValueError:
        return False
    return True


@PROPERTY
@given(
    trip_id=(json_values | sql_or_unicode).filter(lambda v: not is_uuid(v)),
    status=st.sampled_from(sorted(STATUSES)) | json_values,
)
@example(trip_id="'; DROP TABLE trips; --", status="CANCELLED")
@example(trip_id=str(uuid.uuid4())[:-1], status="STARTED")
def test_update_trip_with_a_bad_id_gets_invalid_data(
    loop: EventLoopThread, base_url: str, rider: Account, trip_id: Any, status: Any
) -> None:
    frame = {"type": "update.trip", "data": {"id": trip_id, "status": status}}

    answer = exchange(loop, base_url, rider, as_text(frame))

    assert_error(answer, "invalid_data", "id", request="update.trip")


@PROPERTY
@given(status=(json_values | sql_or_unicode).filter(lambda v: str(v) not in STATUSES))
@example(status="started")
@example(status="STARTED ")
def test_update_trip_with_a_bad_status_gets_invalid_data(
    loop: EventLoopThread, base_url: str, rider: Account, status: Any
) -> None:
    frame = {"type": "update.trip", "data": {"id": str(uuid.uuid4()), "status": status}}

    answer = exchange(loop, base_url, rider, as_text(frame))

    assert_error(answer, "invalid_data", "status", request="update.trip")


def test_update_trip_back_to_requested_gets_invalid_transition(
    loop: EventLoopThread, base_url: str, rider: Account
) -> None:
    frame = {"type": "update.trip", "data": {"id": str(uuid.uuid4()), "status": "REQUESTED"}}

    answer = exchange(loop, base_url, rider, as_text(frame))

    assert_error(answer, "invalid_transition", "REQUESTED", request="update.trip")


coordinates = json_values | st.floats(min_value=-200, max_value=200) | st.integers(-200, 200)
location_data = (
    st.fixed_dictionaries(
        {"lat": coordinates, "lng": coordinates},
        optional={"heading": coordinates | st.none(), "speed_mps": coordinates | st.none()},
    )
    | json_values
)


@PROPERTY
@given(data=location_data)
@example(data={"lat": 52.37, "lng": 4.89})
@example(data={"lat": -90, "lng": 180, "heading": 360, "speed_mps": 0})
@example(data={"lat": 90.000001, "lng": 0})
@example(data={"lat": 52.37, "lng": 4.89, "heading": "north"})
@example(data={"lat": 2**64 - 1, "lng": 4.89})
def test_a_location_is_taken_without_a_word_or_refused_with_invalid_data(
    loop: EventLoopThread, base_url: str, driver: Account, data: Any
) -> None:
    frame = as_text({"type": "update.location", "data": data})
    answer = loop.run(_send_then_echo(base_url, driver.access, frame))

    try:
        location_from(data, "update.location")
    except FrameError:
        assert_error(answer, "invalid_data", "", request="update.location")
    else:
        assert answer == ECHO


def fill(unit: str, budget: int) -> str:
    """`unit` repeated as often as its JSON encoding fits in `budget` bytes."""
    return unit * (budget // (len(orjson.dumps(unit)) - 2))


@FEW
@given(unit=st.text(min_size=1, max_size=3) | st.sampled_from(UNICODE_EDGES))
def test_huge_strings_under_the_frame_limit_are_answered(
    loop: EventLoopThread, base_url: str, rider: Account, settings: Settings, unit: str
) -> None:
    budget = settings.max_frame_bytes - 200
    huge = fill(unit, budget)
    hypothesis.assume(len(huge) > MAX_ADDRESS_LENGTH)

    echo = {"type": "echo.message", "data": huge}
    assert len(as_text(echo).encode()) <= settings.max_frame_bytes
    assert exchange(loop, base_url, rider, as_text(echo)) == echo

    too_long = f"A{huge}"  # not blank, whatever the unit: the length is what is wrong
    create = {"type": "create.trip", "data": {"pick_up_address": too_long, "drop_off_address": "B"}}
    answer = exchange(loop, base_url, rider, as_text(create))
    assert_error(answer, "invalid_data", str(MAX_ADDRESS_LENGTH), request="create.trip")

    unknown = {"type": huge, "data": None}
    answer = exchange(loop, base_url, rider, as_text(unknown))
    assert_error(answer, "unknown_type", "echo.message", request=huge)

    not_json = "{" + huge.replace('"', "'")
    not_json = not_json.encode()[: settings.max_frame_bytes - 8].decode(errors="ignore")
    answer = exchange(loop, base_url, rider, not_json)
    assert_error(answer, "invalid_json", "JSON")


NESTINGS = {
    "arrays": ("", "[", "]", ""),
    "objects": ("", '{"k":', "}", ""),
    "echo data": ('{"type":"echo.message","data":', "[", "]", "}"),
    "trip data": ('{"type":"create.trip","data":{"pick_up_address":', '{"a":', "}", "}}"),
}


@FEW
@given(depth=st.integers(min_value=1025, max_value=10_000), shape=st.sampled_from(sorted(NESTINGS)))
@example(depth=10_000, shape="arrays")
@example(depth=10_000, shape="echo data")
def test_nesting_deeper_than_the_parser_allows_gets_invalid_json(
    loop: EventLoopThread,
    base_url: str,
    rider: Account,
    settings: Settings,
    depth: int,
    shape: str,
) -> None:
    head, opener, closer, tail = NESTINGS[shape]
    text = head + opener * depth + "0" + closer * depth + tail
    hypothesis.assume(len(text.encode()) <= settings.max_frame_bytes)

    answer = exchange(loop, base_url, rider, text)

    assert_error(answer, "invalid_json", "JSON")


@pytest.mark.parametrize("depth", [100, 250])
def test_deeply_nested_data_the_parser_accepts_is_echoed(
    loop: EventLoopThread, base_url: str, rider: Account, depth: int
) -> None:
    nested: Any = "bottom"
    for _ in range(depth):
        nested = [nested]
    echo = {"type": "echo.message", "data": nested}

    assert exchange(loop, base_url, rider, as_text(echo)) == echo


@pytest.mark.parametrize("depth", [255, 1000])
def test_nesting_the_parser_reads_but_cannot_write_back_gets_an_error_frame(
    loop: EventLoopThread, base_url: str, rider: Account, depth: int
) -> None:
    text = '{"type":"echo.message","data":' + "[" * depth + "]" * depth + "}"

    answer = exchange(loop, base_url, rider, text)

    assert_error(answer, "invalid_data", "nest", request="echo.message")


@PROPERTY
@given(payload=st.binary(max_size=2000))
@example(payload=b"")
@example(payload=orjson.dumps({"type": "echo.message", "data": "as binary"}))
@example(payload=b"\xff\xfe\x00\x00 not UTF-8")
def test_binary_frames_get_invalid_frame(
    loop: EventLoopThread, base_url: str, rider: Account, payload: bytes
) -> None:
    answer = exchange(loop, base_url, rider, payload)

    assert_error(answer, "invalid_frame", "binary")


@PROPERTY
@given(data=st.text(max_size=200) | st.sampled_from(UNICODE_EDGES + SQL_SHAPED) | json_values)
@example(data="\x00")
@example(data={"\U0001f695": "\u202e", "": [None, "e\u0301"]})
def test_unicode_and_sql_shaped_data_is_echoed_identically(
    loop: EventLoopThread, base_url: str, rider: Account, data: Any
) -> None:
    echo = {"type": "echo.message", "data": data}

    assert exchange(loop, base_url, rider, as_text(echo)) == echo


# -- Stored verbatim ----------------------------------------------------------------------

addresses = (
    st.text(min_size=1, max_size=MAX_ADDRESS_LENGTH).filter(lambda t: t.strip() and "\x00" not in t)
    | sql_or_unicode
)


async def _request_trip(
    base_url: str, settings: Settings, account: Account, pick_up: str, drop_off: str
) -> None:
    data = {"pick_up_address": pick_up, "drop_off_address": drop_off, "rider": account.id}
    # Resume after the last example's frames, so none of them is mistaken for this one's.
    async with await connect(base_url, account.access, LAST_SEQ.get(account.id, 0)) as ws:
        await ws.send(as_text({"type": "create.trip", "data": data}))
        frame = await receive_until(ws, lambda f: f["type"] in ("trip.requested", "error"))
        assert frame["type"] == "trip.requested", frame
        trip = frame["data"]
        try:
            await _assert_stored_verbatim(base_url, settings, account, trip, pick_up, drop_off)
        finally:
            # A rider holds one live trip at a time: end this one for the next example.
            cancel = {"type": "update.trip", "data": {"id": trip["id"], "status": "CANCELLED"}}
            await ws.send(as_text(cancel))
            cancelled = await receive_until(ws, about(trip["id"], "trip.cancelled"))
            LAST_SEQ[account.id] = cancelled["seq"]


async def _assert_stored_verbatim(
    base_url: str,
    settings: Settings,
    account: Account,
    trip: dict[str, Any],
    pick_up: str,
    drop_off: str,
) -> None:
    assert trip["pick_up_address"] == pick_up
    assert trip["drop_off_address"] == drop_off
    connection = await asyncpg.connect(settings.database_url)
    try:
        row = await connection.fetchrow(
            "SELECT pick_up_address, drop_off_address, rider_id FROM trips WHERE id = $1",
            uuid.UUID(trip["id"]),
        )
    finally:
        await connection.close()
    assert row is not None
    assert (row["pick_up_address"], row["drop_off_address"]) == (pick_up, drop_off)
    assert row["rider_id"] == account.id

    async with httpx.AsyncClient(base_url=base_url, timeout=10) as http:
        response = await http.get(
            f"/api/trip/{trip['id']}/", headers={"Authorization": f"Bearer {account.access}"}
        )
    assert response.status_code == 200, response.text
    assert response.json()["pick_up_address"] == pick_up
    assert response.json()["drop_off_address"] == drop_off


@pytest.mark.usefixtures("dispatchers")
@hypothesis.settings(PROPERTY, max_examples=20)
@given(pick_up=addresses, drop_off=addresses)
@example(pick_up="'; DROP TABLE trips; --", drop_off="Robert'); DROP TABLE users;--")
@example(pick_up="  padded  ", drop_off="\U0001f695 \u202eevil\u202c e\u0301")
def test_accepted_addresses_are_stored_and_sent_back_verbatim(
    loop: EventLoopThread,
    base_url: str,
    settings: Settings,
    trip_rider: Account,
    pick_up: str,
    drop_off: str,
) -> None:
    loop.run(_request_trip(base_url, settings, trip_rider, pick_up, drop_off))
