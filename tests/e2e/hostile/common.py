"""What the hostile-input tests share: the strategies, the documented codes, an event
loop of their own for the sync Hypothesis tests, accounts, and the exchanges and
assertions of one frame or one request.

Hypothesis drives sync tests; each example runs its async client code on an event
loop of its own thread (pytest-asyncio's loop only runs during async tests). Every
example opens its own socket, so the per-connection rate limit never interferes
with what a single example checks.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

import hypothesis
import orjson
from hypothesis import HealthCheck
from hypothesis import strategies as st
from websockets.exceptions import ConnectionClosed

from shared.trips import Status
from tests.clients import Account, connect, receive

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
