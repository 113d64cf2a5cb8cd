"""The WebSocket envelope: `{"type": "...", "data": ...}` frames, encoded with orjson.

Clients send frames; the server answers every bad one with an `error` frame that
says what was wrong and which request it concerns, and keeps the connection open.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import orjson

# Real frames nest three levels at most. The limit is what orjson can write back
# (it reads deeper than it writes), so every accepted frame can be echoed.
MAX_NESTING = 254
# A client's own id for a frame: echoed in the error that refuses it, and the key
# that makes a retry of the frame have no second effect.
REQUEST_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")


class ErrorCode:
    INVALID_JSON = "invalid_json"
    INVALID_FRAME = "invalid_frame"
    UNKNOWN_TYPE = "unknown_type"
    INVALID_DATA = "invalid_data"
    FORBIDDEN = "forbidden"
    NOT_FOUND = "not_found"
    TRIP_UNAVAILABLE = "trip_unavailable"
    INVALID_TRANSITION = "invalid_transition"
    DRIVER_BUSY = "driver_busy"
    # A rider asked for a trip while one of theirs is still REQUESTED, STARTED or IN_PROGRESS.
    TRIP_IN_PROGRESS = "trip_in_progress"
    # A request_id the user already gave, within its retention, to a different request
    # (another type, or other data): the first request's effect stands.
    REQUEST_ID_REUSED = "request_id_reused"
    UNAVAILABLE = "service_unavailable"
    RATE_LIMITED = "rate_limited"
    INTERNAL = "internal_error"


class CloseCode:
    """WebSocket close codes the gateway uses (4xxx are the application's own)."""

    GOING_AWAY = 1001
    MESSAGE_TOO_BIG = 1009
    RATE_LIMITED = 4008
    # The user's sessions were ended (deactivated, password changed): log in again.
    REVOKED = 4003
    # The client read its frames so slowly that its buffer stayed full.
    TOO_SLOW = 4010
    # The user opened more sockets than allowed; this, their oldest, made room.
    REPLACED = 4011


class FrameError(Exception):
    """A client frame the server will not act on; becomes an `error` frame."""

    def __init__(
        self,
        code: str,
        message: str,
        request: str | None = None,
        request_id: str | None = None,
        trip_id: str | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.request = request
        self.request_id = request_id
        self.trip_id = trip_id

    def frame(self) -> bytes:
        return error_frame(self.code, self.message, self.request, self.request_id, self.trip_id)


@dataclass(frozen=True, slots=True)
class ClientFrame:
    type: str
    data: Any
    raw: dict[str, Any]
    request_id: str | None = None

    @property
    def trip_id(self) -> str | None:
        """The trip the frame is about, as the client named it (for error frames)."""
        trip_id = self.data.get("id") if isinstance(self.data, dict) else None
        return trip_id if isinstance(trip_id, str) and len(trip_id) <= 64 else None


def decode_frame(text: str | bytes) -> ClientFrame:
    """Parse one client frame; raise FrameError saying what is wrong with it."""
    try:
        frame = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raise FrameError(
            ErrorCode.INVALID_JSON,
            "frame is not valid JSON (one object, double-quoted strings, finite numbers): "
            f"the first problem is at character {exc.pos}",
        ) from None
    if not isinstance(frame, dict):
        raise FrameError(
            ErrorCode.INVALID_FRAME,
            f'frame must be a JSON object like {{"type": ..., "data": ...}}, '
            f"not {_json_kind(frame)}",
        )
    frame_type = frame.get("type")
    if not isinstance(frame_type, str) or not frame_type:
        raise FrameError(ErrorCode.INVALID_FRAME, 'frame needs a "type" that is a non-empty string')
    request_id = frame.get("request_id")
    if request_id is not None and not (
        isinstance(request_id, str) and REQUEST_ID.fullmatch(request_id)
    ):
        raise FrameError(
            ErrorCode.INVALID_FRAME,
            '"request_id" must be 1 to 64 letters, digits, "-" or "_"',
            request=frame_type,
        )
    if _nested_deeper_than(frame, MAX_NESTING):
        raise FrameError(
            ErrorCode.INVALID_DATA,
            f"frame is nested more than {MAX_NESTING} levels deep",
            request=frame_type,
            request_id=request_id,
        )
    return ClientFrame(type=frame_type, data=frame.get("data"), raw=frame, request_id=request_id)


def _nested_deeper_than(value: Any, limit: int) -> bool:
    """Iteratively, so a hostile frame cannot exhaust the stack while being checked."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        if depth > limit:
            return True
        # Only containers go on the stack: a frame's numbers and strings cost nothing.
        stack.extend((child, depth + 1) for child in children if isinstance(child, dict | list))
    return False


def encode(frame: dict[str, Any]) -> bytes:
    return orjson.dumps(frame)


def error_frame(
    code: str,
    message: str,
    request: str | None = None,
    request_id: str | None = None,
    trip_id: str | None = None,
    event_id: str | None = None,
) -> bytes:
    frame: dict[str, Any] = {
        "type": "error",
        "data": {
            "code": code,
            "message": message,
            "request": request,
            "request_id": request_id,
            "trip_id": trip_id,
        },
    }
    if event_id is not None:
        frame["event_id"] = event_id
    return encode(frame)


def _json_kind(value: Any) -> str:
    if isinstance(value, list):
        return "an array"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    return "null"


def resync_frame(oldest_seq: int) -> bytes:
    """What a resuming client gets when notifications after its `since` are gone: it
    should reload its trips over HTTP."""
    return encode({"type": "resync", "data": {"oldest_seq": oldest_seq}})


def with_seq(body: bytes, seq: int) -> bytes:
    """The frame with `"seq": N` added at its top level, without decoding it again
    (every frame is an object that orjson wrote, so it starts with `{"`)."""
    if not body.startswith(b'{"'):
        raise ValueError("not a frame: a frame is a JSON object")
    return b'{"seq":%d,' % seq + body[1:]


def without_seq(body: bytes, seq: int) -> bytes:
    """The frame `with_seq(frame, seq)` was made from."""
    numbered = b'{"seq":%d,' % seq
    if not body.startswith(numbered):
        raise ValueError(f"not a frame numbered {seq}")
    return b"{" + body[len(numbered) :]
