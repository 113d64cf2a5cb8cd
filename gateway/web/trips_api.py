"""`GET /api/trip/` and `GET /api/trip/<id>/`: trips a user may see, read from Postgres.

A rider sees their own trips; a driver sees those assigned to them and the open
requests offered to them (`shared.trip_rows`). Anything else is a 404, as if it did
not exist.

The list is a page, newest first: `?status=`, `?limit=` (1 to 100) and `?cursor=`
choose it, and the next page's URL comes in a `Link: <...>; rel="next"` header.
The body stays a plain JSON list of trips, as the course's client expects.
"""

from __future__ import annotations

import base64
import struct
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from urllib.parse import urlencode

from starlette.datastructures import QueryParams
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from gateway.responses import OrjsonResponse
from gateway.tokens import TokenError, TokenService
from gateway.users import UserRepository
from gateway.web.errors import ApiError, HttpCode, invalid_fields, token_not_valid
from shared.db import Database
from shared.trip_rows import Position, visible_trip, visible_trips
from shared.trips import Status, Trip
from shared.users import User
from shared.wire import ErrorCode

MAX_PAGE_SIZE = 100
STATUSES = ", ".join(status.value for status in Status)

# A cursor is the last listed trip's creation time (microseconds since the epoch)
# and id, packed and base64url-encoded: opaque to clients, exact for the keyset.
_CURSOR = struct.Struct(">q16s")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class PageRequest:
    limit: int
    status: Status | None
    after: Position | None


class InvalidQuery(Exception):
    def __init__(self, fields: dict[str, list[str]]) -> None:
        super().__init__(fields)
        self.fields = fields


class TripsApi:
    def __init__(self, database: Database, users: UserRepository, tokens: TokenService) -> None:
        self._database = database
        self._users = users
        self._tokens = tokens

    def routes(self) -> list[Route]:
        return [
            Route("/api/trip/", self.list_trips, methods=["GET"]),
            Route("/api/trip/{trip_id}/", self.get_trip, methods=["GET"]),
        ]

    async def list_trips(self, request: Request) -> Response:
        user = await self._authenticate(request)
        try:
            page = parse_page_request(request.query_params)
        except InvalidQuery as exc:
            raise invalid_fields(exc.fields) from None
        # One more than asked for says whether there is a next page.
        found = await visible_trips(
            self._database.pool,
            user,
            limit=page.limit + 1,
            status=page.status,
            after=page.after,
        )
        listed = found[: page.limit]
        headers = {}
        if len(found) > page.limit:
            headers["Link"] = f'<{next_page_url(request, page, listed[-1])}>; rel="next"'
        return OrjsonResponse([trip.payload() for trip in listed], headers=headers)

    async def get_trip(self, request: Request) -> Response:
        user = await self._authenticate(request)
        try:
            trip_id = uuid.UUID(request.path_params["trip_id"])
        except ValueError:
            raise not_found() from None
        trip = await visible_trip(self._database.pool, user, trip_id)
        if trip is None:
            raise not_found()
        return OrjsonResponse(trip.payload())

    async def _authenticate(self, request: Request) -> User:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise ApiError(
                401,
                HttpCode.NOT_AUTHENTICATED,
                "send your access token as 'Authorization: Bearer <token>'",
            )
        try:
            claims = self._tokens.verify(token.strip(), "access")
        except TokenError as exc:
            raise token_not_valid(str(exc)) from None
        user = await self._users.active(claims.user_id, claims.issued_at, claims.session)
        if user is None:
            raise token_not_valid("this account does not exist or is no longer active")
        return user


def parse_page_request(query: QueryParams) -> PageRequest:
    """The page a query asks for; an empty parameter counts as absent."""
    errors: dict[str, list[str]] = {}
    limit = MAX_PAGE_SIZE
    status = None
    after = None
    if raw_limit := query.get("limit"):
        if raw_limit.isascii() and raw_limit.isdigit() and 1 <= int(raw_limit) <= MAX_PAGE_SIZE:
            limit = int(raw_limit)
        else:
            errors["limit"] = [f"must be a whole number from 1 to {MAX_PAGE_SIZE}"]
    if raw_status := query.get("status"):
        try:
            status = Status(raw_status)
        except ValueError:
            errors["status"] = [f"must be one of {STATUSES}"]
    if raw_cursor := query.get("cursor"):
        try:
            after = decode_cursor(raw_cursor)
        except ValueError:
            errors["cursor"] = ["is not a cursor this API gave out; start again without it"]
    if errors:
        raise InvalidQuery(errors)
    return PageRequest(limit, status, after)


def encode_cursor(position: Position) -> str:
    micros = (position.created - _EPOCH) // timedelta(microseconds=1)
    packed = _CURSOR.pack(micros, position.id.bytes)
    return base64.urlsafe_b64encode(packed).rstrip(b"=").decode()


def decode_cursor(cursor: str) -> Position:
    """The position a cursor stands for; ValueError if it is not one `encode_cursor` made."""
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        packed = base64.b64decode(padded, altchars=b"-_", validate=True)
        micros, id_bytes = _CURSOR.unpack(packed)
        return Position(_EPOCH + timedelta(microseconds=micros), uuid.UUID(bytes=id_bytes))
    except (ValueError, struct.error, OverflowError) as exc:  # binascii.Error is a ValueError
        raise ValueError("not a cursor") from exc


def next_page_url(request: Request, page: PageRequest, last: Trip) -> str:
    """A relative URL, so it stays right behind a proxy that rewrites the host."""
    query = {"limit": str(page.limit), "cursor": encode_cursor(Position.of(last))}
    if page.status is not None:
        query = {"status": page.status.value, **query}
    return f"{request.url.path}?{urlencode(query)}"


def not_found() -> ApiError:
    return ApiError(404, ErrorCode.NOT_FOUND, "no such trip, or not one you may see")
