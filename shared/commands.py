"""Commands: what clients ask for, validated at the gateway and again by the dispatcher.

The gateway checks a frame's `data`, stamps it with the authenticated user and a
fresh message id, and publishes the result. The dispatcher decodes the same shape
and never trusts a body it did not check.

A driver's `update.location` is validated here too, but it is no command: locations
come often and matter only while fresh, so the gateway keeps them with the driver and
passes them to every worker's index of drivers (`gateway.live.locations`), never through
the commands queue.
"""

from __future__ import annotations

import hashlib
import time
import uuid
from dataclasses import dataclass
from typing import Any

import orjson

from shared import locations
from shared.locations import Location, Point
from shared.sessions import session_id
from shared.trips import Status
from shared.wire import REQUEST_ID, ErrorCode, FrameError

CREATE_TRIP = "create.trip"
UPDATE_TRIP = "update.trip"
# A driver turns down a trip offered to them (PROTOCOL D2).
DECLINE_TRIP = "decline.trip"
# The frame types published to the dispatcher.
COMMAND_TYPES = (CREATE_TRIP, UPDATE_TRIP, DECLINE_TRIP)
UPDATE_LOCATION = "update.location"
MAX_ADDRESS_LENGTH = 500
# A command's id is derived from its user and request id when the client gave one:
# a retried frame then carries the same id, which the dispatcher applies only once
# (and refuses with `request_id_reused` if it asks for something else: `fingerprint`).
# Nothing else is derived from it: a request id may be used again once forgotten.
REQUEST_ID_NAMESPACE = uuid.UUID("5d0c7a6e-3c1b-4f5e-9a57-7c1f3d2b9e10")


@dataclass(frozen=True, slots=True)
class CreateTrip:
    pick_up_address: str
    drop_off_address: str
    # Where the rider wants to be picked up and dropped off, when their app knows.
    pick_up: Point | None = None
    drop_off: Point | None = None


@dataclass(frozen=True, slots=True)
class UpdateTrip:
    trip_id: uuid.UUID
    status: Status


@dataclass(frozen=True, slots=True)
class DeclineTrip:
    trip_id: uuid.UUID


TripCommand = CreateTrip | UpdateTrip | DeclineTrip


@dataclass(frozen=True, slots=True)
class Command:
    id: uuid.UUID
    type: str
    user_id: int
    data: TripCommand
    sent_at: float
    request_id: str | None = None
    # The session the sender's token belongs to: when it was issued and its family
    # (`sid`). The dispatcher refuses a command whose session has ended
    # (`shared.sessions`); None from a gateway that did not say (checks is_active only).
    issued_at: float | None = None
    session: uuid.UUID | None = None

    def encode(self) -> bytes:
        return orjson.dumps(
            {
                "id": str(self.id),
                "type": self.type,
                "user_id": self.user_id,
                "data": _data_fields(self.data),
                "sent_at": self.sent_at,
                "request_id": self.request_id,
                "issued_at": self.issued_at,
                "session": None if self.session is None else self.session.hex,
            }
        )

    @property
    def fingerprint(self) -> bytes:
        """What the command asks for, as a digest of its type and data: a frame with the
        same request id and the same fingerprint is a retry; with another, a different
        request. Only the fields that matter count (the course's client sends a whole
        trip with an update, of which only `id` and `status` do)."""
        asked = orjson.dumps([self.type, _data_fields(self.data)], option=orjson.OPT_SORT_KEYS)
        return hashlib.sha256(asked).digest()

    @property
    def trip_id(self) -> str | None:
        """The trip the command names (an update's), for the error that refuses it."""
        return str(self.data.trip_id) if isinstance(self.data, UpdateTrip | DeclineTrip) else None


class InvalidCommand(ValueError):
    """A broker message that is not a command this system could have sent."""


def new_command(
    command_type: str,
    user_id: int,
    group: str,
    data: Any,
    request_id: str | None = None,
    *,
    issued_at: float | None = None,
    session: uuid.UUID | None = None,
) -> Command:
    """Validate a client's frame data as the given command; raise FrameError if unfit.
    `issued_at` and `session` are those of the sender's token."""
    return Command(
        id=command_id(user_id, request_id),
        type=command_type,
        user_id=user_id,
        data=parse_data(command_type, data, user_id, group),
        sent_at=time.time(),
        request_id=request_id,
        issued_at=issued_at,
        session=session,
    )


def command_id(user_id: int, request_id: str | None) -> uuid.UUID:
    if request_id is None:
        return uuid.uuid4()
    return uuid.uuid5(REQUEST_ID_NAMESPACE, f"{user_id}:{request_id}")


def decode_command(body: bytes) -> Command:
    try:
        fields = orjson.loads(body)
        command_type = fields["type"]
        user_id = fields["user_id"]
        if isinstance(user_id, bool) or not isinstance(user_id, int):
            raise TypeError("user_id must be an integer")
        if not isinstance(fields["id"], str):
            raise TypeError("id must be a string")
        request_id = fields.get("request_id")
        if request_id is not None and not (
            isinstance(request_id, str) and REQUEST_ID.fullmatch(request_id)
        ):
            raise ValueError("request_id is not one a client could have sent")
        issued_at = fields.get("issued_at")
        if issued_at is not None and (
            isinstance(issued_at, bool) or not isinstance(issued_at, int | float)
        ):
            raise TypeError("issued_at must be a number")
        return Command(
            id=uuid.UUID(fields["id"]),
            type=command_type,
            user_id=user_id,
            data=parse_data(command_type, fields["data"], user_id, group=None),
            sent_at=float(fields["sent_at"]),
            request_id=request_id,
            issued_at=None if issued_at is None else float(issued_at),
            session=session_id(fields.get("session")),
        )
    except (
        orjson.JSONDecodeError,
        KeyError,
        TypeError,
        ValueError,
        AttributeError,
        FrameError,
    ) as exc:
        raise InvalidCommand(f"not a valid command: {exc!r}") from None


def parse_data(command_type: str, data: Any, user_id: int, group: str | None) -> TripCommand:
    if not isinstance(data, dict):
        raise FrameError(
            ErrorCode.INVALID_DATA, '"data" must be an object with the trip\'s fields', command_type
        )
    if command_type == CREATE_TRIP:
        return _parse_create(data, user_id, group)
    if command_type == UPDATE_TRIP:
        return _parse_update(data, user_id, group)
    if command_type == DECLINE_TRIP:
        return _parse_decline(data, group)
    raise FrameError(ErrorCode.UNKNOWN_TYPE, f"unknown command {command_type!r}", command_type)


def _parse_create(data: dict[str, Any], user_id: int, group: str | None) -> CreateTrip:
    if group is not None and group != "rider":
        raise FrameError(ErrorCode.FORBIDDEN, "only riders request trips", CREATE_TRIP)
    rider = data.get("rider")
    if rider is not None and _user_id(rider) != user_id:
        raise FrameError(
            ErrorCode.FORBIDDEN,
            '"rider" must be you, the logged-in user, or be left out',
            CREATE_TRIP,
        )
    return CreateTrip(
        pick_up_address=_address(data, "pick_up_address", CREATE_TRIP),
        drop_off_address=_address(data, "drop_off_address", CREATE_TRIP),
        pick_up=locations.optional_point_from(data, "pick_up", CREATE_TRIP),
        drop_off=locations.optional_point_from(data, "drop_off", CREATE_TRIP),
    )


def check_reports_location(group: str) -> None:
    """Raise FrameError unless a user of `group` may send `update.location`."""
    if group != "driver":
        raise FrameError(ErrorCode.FORBIDDEN, "only drivers report their location", UPDATE_LOCATION)


def parse_location(data: Any, request: str = UPDATE_LOCATION) -> Location:
    """Validate an `update.location` frame's data; raise FrameError naming a bad field."""
    return locations.location_from(data, request)


def new_location(group: str, data: Any) -> Location:
    """A driver's `update.location` as the gateway accepts it: who, then what."""
    check_reports_location(group)
    return parse_location(data)


def _parse_update(data: dict[str, Any], user_id: int, group: str | None) -> UpdateTrip:
    trip_id = _trip_id(data, UPDATE_TRIP)
    try:
        status = Status(str(data.get("status")))
    except ValueError:
        known = ", ".join(status.value for status in Status if status is not Status.REQUESTED)
        raise FrameError(
            ErrorCode.INVALID_DATA, f'"status" must be one of {known}', UPDATE_TRIP
        ) from None
    if status is Status.REQUESTED:
        raise FrameError(
            ErrorCode.INVALID_TRANSITION, "a trip cannot go back to REQUESTED", UPDATE_TRIP
        )
    driver = data.get("driver")
    if status is Status.STARTED and driver is not None and _user_id(driver) != user_id:
        raise FrameError(
            ErrorCode.FORBIDDEN,
            '"driver" must be you, the logged-in driver, or be left out',
            UPDATE_TRIP,
        )
    return UpdateTrip(trip_id=trip_id, status=status)


def _parse_decline(data: dict[str, Any], group: str | None) -> DeclineTrip:
    if group is not None and group != "driver":
        raise FrameError(ErrorCode.FORBIDDEN, "only drivers decline offers", DECLINE_TRIP)
    return DeclineTrip(trip_id=_trip_id(data, DECLINE_TRIP))


def _trip_id(data: dict[str, Any], request: str) -> uuid.UUID:
    try:
        return uuid.UUID(str(data.get("id")))
    except ValueError:
        raise FrameError(
            ErrorCode.INVALID_DATA, '"id" must be the trip\'s id (a UUID)', request
        ) from None


def _address(data: dict[str, Any], name: str, request: str) -> str:
    value = data.get(name)
    if not isinstance(value, str) or not value.strip():
        raise FrameError(ErrorCode.INVALID_DATA, f'"{name}" must be a non-empty string', request)
    if len(value) > MAX_ADDRESS_LENGTH:
        raise FrameError(
            ErrorCode.INVALID_DATA,
            f'"{name}" must be at most {MAX_ADDRESS_LENGTH} characters',
            request,
        )
    if "\x00" in value:
        raise FrameError(
            ErrorCode.INVALID_DATA, f'"{name}" must not contain NUL characters', request
        )
    return value


def _user_id(value: Any) -> int | None:
    """A user named by id, or by the user object the course's client sometimes sends."""
    if isinstance(value, dict):
        value = value.get("id")
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.isascii() and value.isdigit():
        return int(value)
    return None


def _data_fields(data: TripCommand) -> dict[str, Any]:
    if isinstance(data, CreateTrip):
        fields: dict[str, Any] = {
            "pick_up_address": data.pick_up_address,
            "drop_off_address": data.drop_off_address,
        }
        # Left out when absent, so a trip without points has the body it always had.
        if data.pick_up is not None:
            fields["pick_up"] = data.pick_up.payload()
        if data.drop_off is not None:
            fields["drop_off"] = data.drop_off.payload()
        return fields
    if isinstance(data, DeclineTrip):
        return {"id": str(data.trip_id)}
    return {"id": str(data.trip_id), "status": data.status.value}
