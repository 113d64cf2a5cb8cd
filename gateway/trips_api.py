"""`GET /api/trip/` and `GET /api/trip/<id>/`: trips a user may see, read from Postgres.

A rider sees their own trips; a driver sees requested trips and those assigned to
them. Anything else is a 404, as if it did not exist.
"""

from __future__ import annotations

import uuid

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from gateway.http_api import OrjsonResponse, token_not_valid
from gateway.tokens import TokenError, TokenService
from gateway.users import UserRepository
from shared.db import Database
from shared.trip_rows import TRIP_SELECT, trip_from_row
from shared.users import User

# The list is the course's unpaginated list; this keeps one response bounded.
MAX_LISTED_TRIPS = 500


def _visible_to(user: User) -> str:
    """The WHERE condition of the trips `user` may see; `$1` is their id."""
    if user.group == "rider":
        return "t.rider_id = $1"
    return "(t.status = 'REQUESTED' OR t.driver_id = $1)"


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
        if not isinstance(user, User):
            return user
        rows = await self._database.pool.fetch(
            f"{TRIP_SELECT} WHERE {_visible_to(user)}"
            f" ORDER BY t.created DESC LIMIT {MAX_LISTED_TRIPS}",
            user.id,
        )
        return OrjsonResponse([trip_from_row(row).payload() for row in rows])

    async def get_trip(self, request: Request) -> Response:
        user = await self._authenticate(request)
        if not isinstance(user, User):
            return user
        try:
            trip_id = uuid.UUID(request.path_params["trip_id"])
        except ValueError:
            return not_found()
        row = await self._database.pool.fetchrow(
            f"{TRIP_SELECT} WHERE t.id = $2 AND {_visible_to(user)}", user.id, trip_id
        )
        return OrjsonResponse(trip_from_row(row).payload()) if row else not_found()

    async def _authenticate(self, request: Request) -> User | Response:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token:
            return token_not_valid("send the access token as 'Authorization: Bearer <token>'")
        try:
            claims = self._tokens.verify(token.strip(), "access")
        except TokenError as exc:
            return token_not_valid(str(exc))
        user = await self._users.active(claims.user_id)
        if user is None:
            return token_not_valid("user not found or inactive")
        return user


def not_found() -> Response:
    return OrjsonResponse({"detail": "Not found."}, status_code=404)
