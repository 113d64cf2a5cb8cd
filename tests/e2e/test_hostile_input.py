"""Hostile input, property-tested against the real gateway over real sockets.

Every bad frame gets an `error` frame with a documented code and a message that
says what was wrong, and the socket keeps working; every bad HTTP body gets a 400
naming what was wrong, never a 500; text that is accepted is stored verbatim.

Hypothesis drives sync tests; each example runs its async client code on an event
loop of its own thread (pytest-asyncio's loop only runs during async tests).
Every example opens its own socket, so the per-connection rate limit never
interferes with what a single example checks.
"""

from __future__ import annotations

import asyncio
import threading
import unicodedata
import uuid
from collections.abc import Coroutine, Iterator
from typing import Any, TypeVar
from urllib.parse import quote

import asyncpg
import httpx
import hypothesis
import orjson
import pytest
from hypothesis import HealthCheck, example, given
from hypothesis import strategies as st
from websockets.exceptions import ConnectionClosed

from gateway.web.signup import is_acceptable_username
from shared.locations import location_from
from shared.settings import Settings
from shared.trips import Status
from shared.wire import FrameError
from tests.clients import Account, about, connect, create_account, receive, receive_until
from tools.processes import ServiceProcess

T = TypeVar("T")

# The last notification number each account's examples have seen.
LAST_SEQ: dict[int, int] = {}

# The codes README.md's Protocol section documents (the rate limit's code included).
DOCUMENTED_ERROR_CODES = {
    "invalid_json",
    "invalid_frame",
    "unknown_type",
    "invalid_data",
    "forbidden",
    "not_found",
    "trip_unavailable",
    "driver_busy",
    "invalid_transition",
    "service_unavailable",
    "rate_limited",
    "trip_in_progress",
}
KNOWN_TYPES = ("echo.message", "create.trip", "update.trip", "update.location")
STATUSES = {status.value for status in Status}
SIGN_UP_FIELDS = {"username", "first_name", "last_name", "password1", "password2", "group"}
SIGN_UP_FIELDS_AND_PHOTO = SIGN_UP_FIELDS | {"photo"}
ECHO = {"type": "echo.message", "data": "still here"}
# httpx sends a form as multipart only along with a file; the gateway ignores this one.
MULTIPART_FILE = {"unused": ("note.txt", b"not a field", "text/plain")}
MAX_ADDRESS_LENGTH = 500

PROPERTY = hypothesis.settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
FEW = hypothesis.settings(PROPERTY, max_examples=8)

SQL_SHAPED = [
    "'; DROP TABLE trips; --",
    "Robert'); DROP TABLE users;--",
    "' OR '1'='1",
    '" OR ""="',
    "1; SELECT pg_sleep(5); --",
    "' UNION SELECT password_hash, username FROM users --",
    "$1",
    "$$; DELETE FROM trips; $$",
    "%s%s%s%n",
    "\\'; TRUNCATE users CASCADE; --",
    "E'\\\\x00'",
    "/* */ SELECT 1 --",
]
UNICODE_EDGES = [
    "\U0001f695",  # taxi
    "\U0001f469\u200d\U0001f469\u200d\U0001f467\u200d\U0001f466",  # a ZWJ family
    "\U0001f1fa\U0001f1e6",  # a flag: two regional indicators
    "e\u0301\u0302\u0303",  # stacked combining marks
    "Z\u0351\u034b\u0352a\u0350\u0349l\u0352g\u0354o",  # zalgo
    "\u202eevil.exe\u202c",  # right-to-left override
    "\u0645\u0631\u062d\u0628\u0627 123 \u05e9\u05dc\u05d5\u05dd",  # Arabic, digits, Hebrew
    "\ufeffBOM first",
    "zero\u200bwidth\u200cjoiners\u200d",
    "\u2028line\u2029paragraph",
    "\uffff\ufffe",  # noncharacters
    "\U0010ffff",  # the last code point
    "\U0001d57f\U0001d58a\U0001d598\U0001d599",  # mathematical fraktur
    "\u0130stanbul \u00df \ufb03",  # case mapping surprises
    "\x7f\x1b[31mred\x1b[0m",  # DEL and an ANSI escape
    "tab\there\r\nnewline",
]

# JSON values orjson reads back unchanged: integers that fit 64 bits, finite floats.
json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=40)
)
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)
json_non_objects = json_scalars | st.lists(json_values, max_size=5)
non_strings = json_values.filter(lambda value: not isinstance(value, str))
blank_strings = st.text(alphabet=" \t\r\n\u00a0\u2003\u3000", max_size=10)
sql_or_unicode = st.sampled_from(SQL_SHAPED + UNICODE_EDGES)


class EventLoopThread:
    """An event loop running on a thread of its own, for the sync hypothesis tests."""

    def __init__(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()

    def run(self, coroutine: Coroutine[Any, Any, T], timeout: float = 30) -> T:
        future = asyncio.run_coroutine_threadsafe(coroutine, self._loop)
        try:
            return future.result(timeout)
        except TimeoutError:
            future.cancel()
            raise

    def close(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()


@pytest.fixture(scope="module")
def loop() -> Iterator[EventLoopThread]:
    thread = EventLoopThread()
    yield thread
    thread.close()


async def _new_account(base_url: str, group: str) -> Account:
    async with httpx.AsyncClient(base_url=base_url, timeout=10) as http:
        return await create_account(http, group)


@pytest.fixture(scope="module")
def rider(loop: EventLoopThread, base_url: str) -> Account:
    """The rider who sends every hostile frame (none of them creates a trip)."""
    return loop.run(_new_account(base_url, "rider"))


@pytest.fixture(scope="module")
def driver(loop: EventLoopThread, base_url: str) -> Account:
    """The driver who reports every hostile location."""
    return loop.run(_new_account(base_url, "driver"))


@pytest.fixture(scope="module")
def trip_rider(loop: EventLoopThread, base_url: str) -> Account:
    """A rider whose socket sees only the trips the verbatim test requests."""
    return loop.run(_new_account(base_url, "rider"))


async def _exchange(base_url: str, token: str, payload: str | bytes) -> dict[str, Any]:
    """Send one frame on a fresh socket; return the answer once the socket proved alive."""
    async with await connect(base_url, token) as ws:
        await ws.send(payload)
        try:
            answer = await receive(ws)
        except ConnectionClosed as closed:
            raise AssertionError(f"closed instead of answering: {closed}") from None
        await ws.send(orjson.dumps(ECHO).decode())
        try:
            after = await receive(ws)
        except ConnectionClosed as closed:
            raise AssertionError(f"the socket did not survive the frame: {closed}") from None
        assert after == ECHO, after
    return answer


async def _send_then_echo(base_url: str, token: str, payload: str) -> dict[str, Any]:
    """Send a frame that may get no answer, then an echo: the first frame back is the
    answer if there is one (it comes before the echo's), otherwise the echo."""
    async with await connect(base_url, token) as ws:
        await ws.send(payload)
        await ws.send(orjson.dumps(ECHO).decode())
        answer = await receive(ws)
        if answer != ECHO:
            assert await receive(ws) == ECHO
    return answer


def exchange(
    loop: EventLoopThread, base_url: str, account: Account, payload: str | bytes
) -> dict[str, Any]:
    return loop.run(_exchange(base_url, account.access, payload))


def assert_error(
    answer: dict[str, Any],
    code: str,
    says: str,
    request: str | None = None,
    request_id: str | None = None,
) -> dict[str, Any]:
    """`answer` is the documented error frame, with a message that mentions `says`."""
    assert answer["type"] == "error", answer
    data = answer["data"]
    assert set(data) == {"code", "message", "request", "request_id", "trip_id"}, data
    assert data["request_id"] == request_id, data
    assert data["code"] in DOCUMENTED_ERROR_CODES, data
    assert data["code"] == code, data
    assert isinstance(data["message"], str), data
    assert says in data["message"], data
    assert data["request"] == request, data
    return dict(data)


def as_text(frame: Any) -> str:
    return orjson.dumps(frame).decode()


def is_json(text: str) -> bool:
    try:
        orjson.loads(text)
    except orjson.JSONDecodeError:
        return False
    return True


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


# -- HTTP bodies --------------------------------------------------------------------------


def assert_field_errors(response: httpx.Response, allowed: set[str]) -> dict[str, list[str]]:
    """A 400 in the one error shape whose `fields` map field names to non-empty lists
    of messages."""
    assert response.status_code == 400, (response.status_code, response.text)
    assert response.headers["content-type"].startswith("application/json"), response.text
    body = response.json()
    assert set(body) == {"detail", "code", "fields"}, body
    assert body["code"] == "invalid_data" and body["detail"], body
    fields = body["fields"]
    assert isinstance(fields, dict) and fields, body
    assert set(fields) <= allowed, body
    for messages in fields.values():
        assert isinstance(messages, list) and messages, body
        assert all(isinstance(m, str) and m for m in messages), body
    return dict(fields)


async def _post(base_url: str, path: str, **kwargs: Any) -> httpx.Response:
    async with httpx.AsyncClient(base_url=base_url, timeout=10) as http:
        return await http.post(path, **kwargs)


field_values = (
    json_values
    | st.text(max_size=200)
    | st.sampled_from(["rider", "driver", "pAssw0rd!", *SQL_SHAPED, *UNICODE_EDGES])
    | st.text(min_size=151, max_size=400)
)


@PROPERTY
@given(
    body=st.fixed_dictionaries(
        {}, optional=dict.fromkeys(sorted(SIGN_UP_FIELDS_AND_PHOTO), field_values)
    ),
    extra=st.dictionaries(st.text(max_size=10), json_values, max_size=3),
)
@example(body={"username": None, "password1": 12345678, "group": ["rider"]}, extra={})
@example(body={"username": "x@example.com", "photo": "http://evil/x.png"}, extra={})
def test_sign_up_json_with_random_fields_is_refused_naming_them_or_created(
    loop: EventLoopThread, base_url: str, body: dict[str, Any], extra: dict[str, Any]
) -> None:
    response = loop.run(_post(base_url, "/api/sign_up/", json={**extra, **body}))

    if response.status_code == 201:
        user = response.json()
        assert user["username"] == body["username"].strip()
        assert user["group"] == body["group"]
    else:
        assert_field_errors(response, SIGN_UP_FIELDS_AND_PHOTO)


@PROPERTY
@given(
    body=st.dictionaries(
        st.sampled_from(sorted(SIGN_UP_FIELDS)) | st.text(max_size=12),
        st.text(max_size=200) | sql_or_unicode,
        max_size=10,
    ),
    encoding=st.sampled_from(["urlencoded", "multipart"]),
)
def test_sign_up_form_with_random_fields_is_refused_naming_them_or_created(
    loop: EventLoopThread, base_url: str, body: dict[str, str], encoding: str
) -> None:
    files = MULTIPART_FILE if encoding == "multipart" else None
    response = loop.run(_post(base_url, "/api/sign_up/", data=body, files=files))

    if response.status_code == 201:
        assert response.json()["username"] == body["username"].strip()
    else:
        assert_field_errors(response, SIGN_UP_FIELDS_AND_PHOTO)


@pytest.mark.parametrize("encoding", ["urlencoded", "multipart"])
def test_a_form_with_too_many_fields_gets_a_json_400(
    loop: EventLoopThread, base_url: str, encoding: str
) -> None:
    body = {f"field{n}": "x" for n in range(30)}
    files = MULTIPART_FILE if encoding == "multipart" else None

    response = loop.run(_post(base_url, "/api/sign_up/", data=body, files=files))

    assert response.status_code == 400
    assert response.headers["content-type"].startswith("application/json"), response.text
    assert "field" in response.json()["detail"]


@PROPERTY
@given(body=st.binary(max_size=300) | json_non_objects.map(orjson.dumps))
@example(body=b"{")
@example(body=b"[" * 5000)
@example(body=b'{"username": "\\ud800"}')
def test_sign_up_body_that_is_not_a_json_object_gets_a_400_saying_so(
    loop: EventLoopThread, base_url: str, body: bytes
) -> None:
    hypothesis.assume(body.strip() not in (b"", b"{}"))
    response = loop.run(
        _post(base_url, "/api/sign_up/", content=body, headers={"content-type": "application/json"})
    )

    assert response.status_code == 400, response.text
    detail = response.json()["detail"]
    assert "JSON" in detail


names = st.text(max_size=150).filter(lambda t: "\x00" not in t) | sql_or_unicode


@hypothesis.settings(PROPERTY, max_examples=12)
@given(
    username=names,
    first_name=names,
    last_name=names,
    password=st.text(min_size=8, max_size=64).filter(lambda t: "\x00" not in t),
    group=st.sampled_from(["rider", "driver"]),
    encoding=st.sampled_from(["json", "urlencoded", "multipart"]),
)
@example(
    username="'; DROP TABLE users; --",
    first_name="Robert'); DROP TABLE users;--",
    last_name="\u202e\U0001f695",
    password="' OR '1'='1",
    group="rider",
    encoding="json",
)
def test_signed_up_names_are_stored_verbatim_and_the_password_works(
    loop: EventLoopThread,
    base_url: str,
    settings: Settings,
    username: str,
    first_name: str,
    last_name: str,
    password: str,
    group: str,
    encoding: str,
) -> None:
    # The user name's own rules have a test of their own (below); here it only
    # needs to be new. The password keeps its hostile text, made uncommon.
    password = f"pw-{uuid.uuid4().hex[:6]}{password}"
    fields = {
        "username": f"u{uuid.uuid4().hex[:8]}@example.org",
        "first_name": first_name,
        "last_name": last_name,
        "password1": password,
        "password2": password,
        "group": group,
    }
    loop.run(_sign_up_and_log_in(base_url, settings, fields, encoding))


@hypothesis.settings(PROPERTY, max_examples=30)
@given(username=names)
@example(username="line\nbreak@example.org")
@example(username="zero\u200bwidth@example.org")
@example(username="\u202eevil@example.org")
@example(username="not an e-mail")
@example(username="cafe\u0301@example.org")
def test_a_user_name_is_refused_naming_the_rule_or_stored_in_its_nfkc_form(
    loop: EventLoopThread, base_url: str, username: str
) -> None:
    unique = f"{uuid.uuid4().hex[:8]}{username}"
    fields = {
        "username": unique,
        "password1": "a-Long-uncommon-pw",
        "password2": "a-Long-uncommon-pw",
        "group": "rider",
    }
    response = loop.run(_post(base_url, "/api/sign_up/", json=fields))

    stored = unicodedata.normalize("NFKC", unique).strip()
    if is_acceptable_username(stored):
        assert response.status_code == 201, response.text
        assert response.json()["username"] == stored
    else:
        assert "username" in assert_field_errors(response, {"username"})


async def _sign_up_and_log_in(
    base_url: str, settings: Settings, fields: dict[str, str], encoding: str
) -> None:
    async with httpx.AsyncClient(base_url=base_url, timeout=10) as http:
        if encoding == "json":
            response = await http.post("/api/sign_up/", json=fields)
        elif encoding == "urlencoded":
            response = await http.post("/api/sign_up/", data=fields)
        else:
            response = await http.post("/api/sign_up/", data=fields, files=MULTIPART_FILE)
        assert response.status_code == 201, response.text
        user = response.json()
        assert user["username"] == fields["username"].strip()
        assert user["first_name"] == fields["first_name"]
        assert user["last_name"] == fields["last_name"]

        logged_in = await http.post(
            "/api/log_in/", json={"username": user["username"], "password": fields["password1"]}
        )
        assert logged_in.status_code == 200, logged_in.text

    connection = await asyncpg.connect(settings.database_url)
    try:
        row = await connection.fetchrow(
            "SELECT username, first_name, last_name, user_group FROM users WHERE id = $1",
            user["id"],
        )
    finally:
        await connection.close()
    assert row is not None
    assert dict(row) == {
        "username": fields["username"].strip(),
        "first_name": fields["first_name"],
        "last_name": fields["last_name"],
        "user_group": fields["group"],
    }


@PROPERTY
@given(
    path=st.sampled_from(["/api/log_in/", "/api/token/refresh/"]),
    body=st.dictionaries(
        st.sampled_from(["username", "password", "refresh"]) | st.text(max_size=8),
        field_values,
        max_size=4,
    ),
)
@example(path="/api/log_in/", body={"username": "' OR '1'='1' --", "password": "' OR '1'='1"})
@example(path="/api/log_in/", body={"username": "a\x00b", "password": "pAssw0rd!"})
@example(path="/api/token/refresh/", body={"refresh": "' OR 1=1 --"})
@example(path="/api/token/refresh/", body={"refresh": "a.b.c"})
def test_log_in_and_refresh_with_random_bodies_are_refused_with_400_or_401(
    loop: EventLoopThread, base_url: str, path: str, body: dict[str, Any]
) -> None:
    response = loop.run(_post(base_url, path, json=body))

    assert response.status_code in (400, 401), (response.status_code, response.text)
    answer = response.json()
    if response.status_code == 400:
        assert_field_errors(response, {"username", "password", "refresh"})
    else:
        assert isinstance(answer["detail"], str) and answer["detail"]


def test_sign_up_json_body_over_64_kib_gets_413_saying_so(
    loop: EventLoopThread, base_url: str
) -> None:
    body = {"username": "big@example.com", "first_name": "x" * (64 * 1024)}

    response = loop.run(_post(base_url, "/api/sign_up/", json=body))

    assert response.status_code == 413, response.text
    assert "bytes" in response.json()["detail"]


@pytest.mark.parametrize("content_type", ["text/plain", "application/xml", "image/png"])
def test_sign_up_in_an_unsupported_content_type_gets_415_saying_so(
    loop: EventLoopThread, base_url: str, content_type: str
) -> None:
    headers = {"content-type": content_type}
    response = loop.run(_post(base_url, "/api/sign_up/", content=b"username=x", headers=headers))

    assert response.status_code == 415, response.text
    assert "JSON" in response.json()["detail"]


@PROPERTY
@given(trip_id=(st.text(min_size=1, max_size=100) | sql_or_unicode).filter(lambda t: t.strip(".")))
@example(trip_id="' OR 1=1 --")
@example(trip_id="00000000-0000-0000-0000-000000000000")
def test_a_trip_id_that_names_no_trip_of_the_user_gets_404(
    loop: EventLoopThread, base_url: str, rider: Account, trip_id: str
) -> None:
    async def get() -> httpx.Response:
        async with httpx.AsyncClient(base_url=base_url, timeout=10) as http:
            return await http.get(
                f"/api/trip/{quote(trip_id, safe='')}/",
                headers={"Authorization": f"Bearer {rider.access}"},
            )

    response = loop.run(get())

    assert response.status_code == 404, response.text


# -- Tokens that are not tokens -------------------------------------------------------------


def assert_token_refused(response: httpx.Response, token: str) -> None:
    assert response.status_code == 401, response.text
    body = response.json()
    assert body["code"] == "token_not_valid", body
    assert isinstance(body["detail"], str) and body["detail"], body
    # Anything long enough to be a secret is not repeated back (short garbage may
    # match the message's own words by chance).
    if len(token) >= 12:
        assert token not in body["detail"], body


async def _handshake_status(base_url: str, token: str) -> httpx.Response:
    """The gateway's answer to a handshake with `token` (percent-encoded into the URL)."""
    url = f"{base_url}/taxi/?token={quote(token, safe='')}"
    headers = {
        "connection": "upgrade",
        "upgrade": "websocket",
        "sec-websocket-version": "13",
        "sec-websocket-key": "dGhlIHNhbXBsZSBub25jZQ==",
    }
    async with httpx.AsyncClient(timeout=10) as http:
        return await http.get(url, headers=headers)


@PROPERTY
@given(token=st.text(min_size=1, max_size=300) | sql_or_unicode)
@example(token="a.b.c")
@example(token="eyJhbGciOiJub25lIn0.e30.")
@example(token="..")
def test_a_handshake_with_garbage_for_a_token_gets_401_without_echoing_it(
    loop: EventLoopThread, base_url: str, token: str
) -> None:
    response = loop.run(_handshake_status(base_url, token))

    assert_token_refused(response, token)


@PROPERTY
@given(token=st.text(alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1))
@example(token="' OR '1'='1")
def test_an_api_call_with_garbage_for_a_bearer_token_gets_401_without_echoing_it(
    loop: EventLoopThread, base_url: str, token: str
) -> None:
    async def call() -> httpx.Response:
        async with httpx.AsyncClient(base_url=base_url, timeout=10) as http:
            return await http.get("/api/trip/", headers={"Authorization": f"Bearer {token}"})

    response = loop.run(call())

    assert_token_refused(response, token)


# -- Everyone survived ---------------------------------------------------------------------


def test_the_gateway_and_the_dispatchers_are_still_up_after_all_of_the_above(
    loop: EventLoopThread,
    base_url: str,
    rider: Account,
    gateway_process: tuple[ServiceProcess, str],
    dispatchers: list[ServiceProcess],
) -> None:
    assert gateway_process[0].poll() is None, gateway_process[0].log()
    for worker in dispatchers:
        assert worker.poll() is None, worker.log()
    assert httpx.get(f"{base_url}/readyz", timeout=5).status_code == 200
    answer = exchange(loop, base_url, rider, as_text({"type": "echo.message", "data": "bye"}))
    assert answer == {"type": "echo.message", "data": "bye"}
