"""The course's dialect on the socket (PROTOCOL D4): what the testdriven.io course's own
React client (`taxi-react-app`, `client/`, v4.0.0) gets instead of our own frames. Its
error bodies over HTTP are `gateway.web.course_forms`. Pure functions, no I/O.

A socket opened without the `taxi.v2` subprotocol gets, for each of our
frames, what `course_frame` makes of it: the frame the course's server would have sent
(`{"type": "echo.message", "data": <trip>}`), or nothing. The course's client adds
every received frame's `data` to its list of trips by `id`, and reads `data.rider`
(drivers' dashboard) or `data.driver` (riders' dashboard) as a user: a frame whose
`data` is not a trip, or is a rider's trip without a driver, throws in its handler
or blanks its page. So, by our frame:

- `trip.requested` without `seq` (an offer to a driver): sent; the driver's dashboard
  lists it under "Requested Trips".
- `trip.requested` with `seq` (the rider's own request): dropped. The trip has no
  driver yet; the course's rider dashboard shows such a trip nowhere and its toast
  reads `trip.driver.first_name`, which throws.
- `trip.accepted`, `trip.picked_up`, `trip.completed` (the rider's and the driver's,
  numbered): sent, as the course's server sends every step.
- `trip.cancelled` with `seq` and a driver (the rider and the assigned driver): sent;
  the trip shows `CANCELLED`. Without a driver (nobody had accepted): dropped, as for
  a request. Without `seq` (to the drivers it was offered to): dropped; the course's
  driver dashboard would announce it as a new request.
- `trip.taken` (to the drivers who did not win): dropped. Its trip has another
  driver, and the course's dashboard would file it as the reader's current trip. The
  course's server never told losing drivers either: the offer stays listed until the
  page reloads its trips.
- `trip.withdrawn`, `driver.location`, `error`, `resync`, and any frame of a type not
  named here: dropped (their `data` is not a trip).
- `echo.message`: sent as it is, as the course's server echoes.
"""

from __future__ import annotations

from typing import Any, Final

import orjson

# The subprotocol of our own dialect; a socket without it speaks the course's.
OUR_SUBPROTOCOL: Final = "taxi.v2"

# The frame type the course's server puts on every trip it sends.
COURSE_TYPE: Final = "echo.message"

# Our trip frames that reach the course's client as its server would have sent them.
_TRIP_STEPS: Final = frozenset({"trip.accepted", "trip.picked_up", "trip.completed"})

# The last frame translated, and what it became: one frame is often put to many
# sockets in a row (an offer to every driver here, a notification to every socket of
# a user), so it is decoded once. Holding the text itself (not its id) keeps the
# comparison by identity sound.
_last: tuple[str, str | None] | None = None


def course_frame(frame_type: str, text: str, numbered: bool) -> str | None:
    """What a socket in the course's dialect is sent for one of our frames: its text
    (`frame_type` its type, `text` its JSON, `numbered` whether it carries the user's
    `seq`), or None to send nothing."""
    global _last
    last = _last
    if last is not None and last[0] is text:
        return last[1]
    translated = _translate(frame_type, text, numbered)
    _last = (text, translated)
    return translated


def _translate(frame_type: str, text: str, numbered: bool) -> str | None:
    if frame_type == COURSE_TYPE:
        return text
    if frame_type == "trip.requested":
        # Offers only: the rider's own copy has no driver yet.
        return None if numbered else _as_course_trip(text, needs_driver=False)
    if frame_type in _TRIP_STEPS:
        return _as_course_trip(text, needs_driver=True)
    if frame_type == "trip.cancelled" and numbered:
        return _as_course_trip(text, needs_driver=True)
    # trip.taken, trip.cancelled to other drivers, trip.withdrawn, driver.location,
    # error, resync, and anything else.
    return None


def _as_course_trip(text: str, *, needs_driver: bool) -> str | None:
    """The course server's frame for the trip in our frame, or None if it holds no
    trip the course's client can show (no rider, or no driver where one is needed)."""
    try:
        frame = orjson.loads(text)
    except orjson.JSONDecodeError:
        return None
    trip = frame.get("data") if isinstance(frame, dict) else None
    if not _is_trip(trip, needs_driver=needs_driver):
        return None
    return orjson.dumps({"type": COURSE_TYPE, "data": trip}).decode()


def _is_trip(data: Any, *, needs_driver: bool) -> bool:
    if not isinstance(data, dict) or not isinstance(data.get("id"), str):
        return False
    if not isinstance(data.get("rider"), dict) or not isinstance(data.get("status"), str):
        return False
    driver = data.get("driver")
    return isinstance(driver, dict) if needs_driver else driver is None or isinstance(driver, dict)
