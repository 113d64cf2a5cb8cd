"""The rider watches the car come (PROTOCOL C3, live tracking): while a trip is
`STARTED` or `IN_PROGRESS`, each location its driver reports reaches every socket of
its rider as `driver.location`, unnumbered; before and after, and to anyone else,
nothing.

Absence is proven by order, not by waiting: frames for one rider pass through one
gateway queue and one socket buffer in the order they were published, so a frame
that came after a location that was never sent shows that it was not sent."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import ClientConnection

from tests.clients import Account, about, connect, create_account, receive, receive_until, send

pytestmark = pytest.mark.usefixtures("dispatchers")

# The gateway acts on one location a second per driver: reports further apart than this.
REPORT_GAP_SECONDS = 1.1
# Somewhere no other test puts its drivers.
ORIGIN = {"lat": -33.8688, "lng": 151.2093}


def point(step: int) -> dict[str, float]:
    return {"lat": ORIGIN["lat"] + step * 0.001, "lng": ORIGIN["lng"], "heading": 0.0}


class Reporter:
    """A driver's socket sending locations no closer together than the gateway acts on."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self._last = 0.0

    async def report(self, where: dict[str, float]) -> None:
        wait = self._last + REPORT_GAP_SECONDS - time.monotonic()
        if wait > 0:
            # The rate limit is a matter of time: let it pass.
            await asyncio.sleep(wait)
        await send(self.ws, {"type": "update.location", "data": where})
        self._last = time.monotonic()
        await handled(self.ws)


async def handled(ws: ClientConnection) -> list[dict[str, Any]]:
    """Every frame the socket receives until the echo of a marker sent now: the gateway
    handles a socket's frames in order, so whatever was sent before is handled."""
    marker = f"marker-{time.monotonic_ns()}"
    await send(ws, {"type": "echo.message", "data": marker})
    before = []
    while (frame := await receive(ws)) != {"type": "echo.message", "data": marker}:
        before.append(frame)
    return before


def locations(frames: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [frame for frame in frames if frame["type"] == "driver.location"]


async def step(driver: ClientConnection, trip: dict[str, Any], status: str, event: str) -> None:
    await send(driver, {"type": "update.trip", "data": {"id": trip["id"], "status": status}})
    await receive_until(driver, about(trip["id"], event))


@contextlib.asynccontextmanager
async def sockets(base_url: str, *accounts: Account) -> AsyncIterator[list[ClientConnection]]:
    async with contextlib.AsyncExitStack() as stack:
        yield [
            await stack.enter_async_context(await connect(base_url, account.access))
            for account in accounts
        ]


async def request(rider_ws: ClientConnection) -> dict[str, Any]:
    data = {"pick_up_address": "Circular Quay", "drop_off_address": "Bondi", "pick_up": ORIGIN}
    await send(rider_ws, {"type": "create.trip", "data": data})
    frame = await receive_until(rider_ws, lambda f: f["type"] == "trip.requested")
    return dict(frame["data"])


async def offered(driver: ClientConnection, trip: dict[str, Any]) -> None:
    """A driver accepts only a trip offered to them (PROTOCOL D1): by the first ring, or
    by the next if the workers heard of their location late."""
    await receive_until(driver, about(trip["id"], "trip.requested"), wait_seconds=30)


async def location_at(ws: ClientConnection, where: dict[str, float]) -> dict[str, Any]:
    """The next `driver.location` frame that puts the driver at `where`."""
    return await receive_until(
        ws, lambda f: f["type"] == "driver.location" and f["data"]["lat"] == where["lat"]
    )


async def test_every_socket_of_the_rider_sees_the_driver_move_until_the_trip_ends(
    http: httpx.AsyncClient, base_url: str
) -> None:
    rider, other_rider, bystander = [await create_account(http, "rider") for _ in range(3)]
    driver, other_driver = [await create_account(http, "driver") for _ in range(2)]
    async with sockets(base_url, rider, rider, other_rider, bystander, driver, other_driver) as (
        phone,
        laptop,
        other_ws,
        bystander_ws,
        driver_ws,
        other_driver_ws,
    ):
        dan, eve = Reporter(driver_ws), Reporter(other_driver_ws)
        await dan.report(point(0))
        trip = await request(phone)
        await offered(driver_ws, trip)
        await step(driver_ws, trip, "STARTED", "trip.accepted")
        # Where the driver is comes at once with the accept, then with each report.
        first = await location_at(phone, point(0))
        await dan.report(point(1))
        moved = [await location_at(ws, point(1)) for ws in (phone, laptop)]
        await step(driver_ws, trip, "IN_PROGRESS", "trip.picked_up")
        await dan.report(point(2))
        riding = await location_at(phone, point(2))

        # A second trip under way on the same gateway, to prove the absence of frames.
        await eve.report(point(10))
        other_trip = await request(other_ws)
        await offered(other_driver_ws, other_trip)
        await step(other_driver_ws, other_trip, "STARTED", "trip.accepted")
        await step(driver_ws, trip, "COMPLETED", "trip.completed")
        await receive_until(laptop, about(trip["id"], "trip.completed"))
        await dan.report(point(3))  # the trip is over: for nobody
        await eve.report(point(11))  # published after Dan's report was handled
        await location_at(other_ws, point(11))
        after_the_trip = {
            "phone": await handled(phone),
            "laptop": await handled(laptop),
            "bystander": await handled(bystander_ws),
        }

    assert first["data"]["lat"] == point(0)["lat"]
    for frame in (first, *moved, riding):
        assert set(frame) == {"type", "data"}, frame  # no seq, no event id
        assert set(frame["data"]) == {"trip_id", "lat", "lng", "heading", "at"}
        assert frame["data"]["trip_id"] == trip["id"]
        assert frame["data"]["lng"] == ORIGIN["lng"]
        assert frame["data"]["heading"] == 0.0
        assert datetime.fromisoformat(frame["data"]["at"]).tzinfo is not None
    assert moved[0]["data"] == moved[1]["data"]
    for who, frames in after_the_trip.items():
        assert locations(frames) == [], who
