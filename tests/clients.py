"""Rider and driver clients speaking the public protocol, for end-to-end tests."""

from __future__ import annotations

import asyncio
import itertools
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import httpx
import orjson
import websockets
from websockets.asyncio.client import ClientConnection
from websockets.typing import Subprotocol

from gateway.live.course_frames import OUR_SUBPROTOCOL

PASSWORD = "pAssw0rd!"
# Our clients speak our own dialect (PROTOCOL D4), not the course's.
SUBPROTOCOLS = [Subprotocol(OUR_SUBPROTOCOL)]
RECEIVE_TIMEOUT_SECONDS = 10
# A command refused as unavailable (a gateway restoring its broker link) is sent again
# this long after, as a client's retry would be.
RESEND_SECONDS = 0.2
_counter = itertools.count()


@dataclass
class Account:
    user: dict[str, Any]
    access: str
    refresh: str

    @property
    def id(self) -> int:
        return int(self.user["id"])


def new_username(group: str) -> str:
    return f"{group}-{next(_counter)}-{uuid.uuid4().hex[:8]}@example.com"


async def sign_up(http: httpx.AsyncClient, group: str, **extra: str) -> dict[str, Any]:
    response = await http.post(
        "/api/sign_up/",
        data={
            "username": new_username(group),
            "first_name": extra.get("first_name", "Test"),
            "last_name": extra.get("last_name", group.title()),
            "password1": PASSWORD,
            "password2": PASSWORD,
            "group": group,
        },
    )
    assert response.status_code == 201, response.text
    return dict(response.json())


async def create_account(http: httpx.AsyncClient, group: str) -> Account:
    user = await sign_up(http, group)
    response = await http.post(
        "/api/log_in/", json={"username": user["username"], "password": PASSWORD}
    )
    assert response.status_code == 200, response.text
    tokens = response.json()
    return Account(user=user, access=tokens["access"], refresh=tokens["refresh"])


def ws_url(base_url: str, token: str | None, since: int | None = None) -> str:
    url = base_url.replace("http://", "ws://") + "/taxi/"
    query = [f"token={token}"] if token is not None else []
    if since is not None:
        query.append(f"since={since}")
    return f"{url}?{'&'.join(query)}" if query else url


async def connect(base_url: str, token: str | None, since: int | None = None) -> ClientConnection:
    return await websockets.connect(
        ws_url(base_url, token, since), open_timeout=10, subprotocols=SUBPROTOCOLS
    )


async def send(ws: ClientConnection, frame: dict[str, Any]) -> None:
    await ws.send(orjson.dumps(frame).decode())


async def receive(
    ws: ClientConnection, wait_seconds: float = RECEIVE_TIMEOUT_SECONDS
) -> dict[str, Any]:
    raw = await asyncio.wait_for(ws.recv(), wait_seconds)
    frame = orjson.loads(raw)
    assert isinstance(frame, dict)
    return frame


async def receive_until(
    ws: ClientConnection,
    wanted: Callable[[dict[str, Any]], bool],
    wait_seconds: float = RECEIVE_TIMEOUT_SECONDS,
) -> dict[str, Any]:
    """The first frame `wanted` accepts, skipping other traffic (other trips', say)."""
    async with asyncio.timeout(wait_seconds):
        while True:
            frame = await receive(ws, wait_seconds)
            if wanted(frame):
                return frame


async def command(
    ws: ClientConnection,
    frame: dict[str, Any],
    answered: Callable[[dict[str, Any]], bool],
    wait_seconds: float = RECEIVE_TIMEOUT_SECONDS,
) -> dict[str, Any]:
    """Send `frame` with a request id, and again with the same id while the gateway
    refuses it with `service_unavailable`, as the protocol asks of clients; the first
    frame `answered` accepts, or the first other refusal of it."""
    frame = {**frame, "request_id": uuid.uuid4().hex}

    def refusal_or_answer(reply: dict[str, Any]) -> bool:
        refused = is_error(reply) and reply["data"].get("request_id") == frame["request_id"]
        return refused or answered(reply)

    async with asyncio.timeout(wait_seconds):
        while True:
            await send(ws, frame)
            reply = await receive_until(ws, refusal_or_answer, wait_seconds)
            if not (is_error(reply) and reply["data"]["code"] == "service_unavailable"):
                return reply
            await asyncio.sleep(RESEND_SECONDS)


def about(trip_id: str, frame_type: str | None = None) -> Callable[[dict[str, Any]], bool]:
    """Matches frames carrying the trip `trip_id` (and of `frame_type`, if given)."""

    def matches(frame: dict[str, Any]) -> bool:
        data = frame.get("data")
        return (
            isinstance(data, dict)
            and data.get("id") == trip_id
            and (frame_type is None or frame["type"] == frame_type)
        )

    return matches


def equal_to(expected: dict[str, Any]) -> Callable[[dict[str, Any]], bool]:
    """Matches `expected` itself (an echo, say), which other traffic may come before: a
    new driver without a location is offered every request without a pick-up point."""
    return lambda frame: frame == expected


def is_error(frame: dict[str, Any]) -> bool:
    return frame.get("type") == "error"


@asynccontextmanager
async def rider_and_driver(
    http: httpx.AsyncClient, base_url: str
) -> AsyncIterator[tuple[Account, Account, ClientConnection, ClientConnection]]:
    """A new rider and a new driver, each with an open socket."""
    rider = await create_account(http, "rider")
    driver = await create_account(http, "driver")
    async with (
        await connect(base_url, rider.access) as rider_ws,
        await connect(base_url, driver.access) as driver_ws,
    ):
        yield rider, driver, rider_ws, driver_ws
