"""The course's dialect over real sockets (PROTOCOL D4): sockets opened without the
`taxi.v2` subprotocol, as the course's own React client opens them, receive only
frames its dashboards can show, as its server would have sent them, through a full
trip, a lost race, a second request while one is open, a driver reporting
locations, a cancel, a request that times out, and a resume.

Each frame received is fed to a model of the course's dashboards (the one the unit
tests of `gateway.live.course_frames` use), which raises where the course's page would
throw or go blank. The system is this module's own, with a short request timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import websockets
from websockets.asyncio.client import ClientConnection

from shared.settings import Settings
from tests.clients import Account, create_account, ws_url
from tests.unit.test_course_dialect import driver_dashboard, rider_dashboard
from tools.cleanup import delete_broker_objects, unique_name
from tools.processes import ServiceProcess, start_dispatcher, start_gateway

REQUEST_TIMEOUT_SECONDS = 3
REQUEST = {"type": "create.trip", "data": {"pick_up_address": "A", "drop_off_address": "B"}}
COURSE_TYPE = "echo.message"

Dashboard = Callable[[dict[str, Any], Any], None]


@pytest.fixture(scope="module")
def course_system(settings: Settings, log_dir: Path) -> Iterator[str]:
    own = replace(
        settings,
        broker_prefix=unique_name("course").replace("_", "-"),
        request_timeout_seconds=REQUEST_TIMEOUT_SECONDS,
    )
    processes: list[ServiceProcess] = []
    try:
        gateway, base_url = start_gateway(own, log_dir)
        processes.append(gateway)
        processes.append(start_dispatcher(own, log_dir / "course-dispatcher.log"))
        yield base_url
    finally:
        for process in processes:
            process.stop()
        asyncio.run(delete_broker_objects(own))


@pytest.fixture
async def http(course_system: str) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=course_system, timeout=10) as client:
        yield client


class CourseClient:
    """A socket without a subprotocol, and the course's dashboard fed every frame."""

    def __init__(self, ws: ClientConnection, dashboard: Dashboard) -> None:
        self.ws = ws
        self.dashboard = dashboard
        self.trips: dict[str, Any] = {}
        self.frames: list[dict[str, Any]] = []

    async def send(self, frame: dict[str, Any]) -> None:
        await self.ws.send(orjson.dumps(frame).decode())

    async def settle(self) -> list[dict[str, Any]]:
        """Every frame until the echo of a marker sent now, each shown by the course's
        dashboard: the gateway answers a socket's frames in order, and what the
        marker's echo overtakes was not sent before it."""
        marker = {"type": COURSE_TYPE, "data": f"marker-{time.monotonic_ns()}"}
        await self.send(marker)
        received: list[dict[str, Any]] = []
        while True:
            frame = orjson.loads(await asyncio.wait_for(self.ws.recv(), 10))
            if frame == marker:
                return received
            assert set(frame) == {"type", "data"} and frame["type"] == COURSE_TYPE, frame
            self.dashboard(self.trips, frame)
            self.frames.append(frame)
            received.append(frame)

    async def until_offered(self, other_than: frozenset[str] = frozenset()) -> dict[str, Any]:
        """The next trip offered to this driver (shown under "Requested Trips")."""
        async with asyncio.timeout(15):
            while True:
                for frame in await self.settle():
                    trip = frame["data"]
                    if trip["status"] == "REQUESTED" and trip["id"] not in other_than:
                        return dict(trip)

    async def until(self, trip_id: str, status: str) -> dict[str, Any]:
        """The trip as the course's client holds it once it reached `status`."""
        async with asyncio.timeout(15):
            while self.trips.get(trip_id, {}).get("status") != status:
                await self.settle()
        return dict(self.trips[trip_id])


@contextlib.asynccontextmanager
async def course_client(base_url: str, account: Account) -> AsyncIterator[CourseClient]:
    dashboard = rider_dashboard if account.user["group"] == "rider" else driver_dashboard
    async with websockets.connect(ws_url(base_url, account.access), open_timeout=10) as ws:
        assert ws.subprotocol is None
        yield CourseClient(ws, dashboard)


async def test_a_full_trip_a_lost_race_and_a_second_request_show_as_the_course_shows_them(
    course_system: str, http: httpx.AsyncClient
) -> None:
    rider, winner, loser = [
        await create_account(http, group) for group in ("rider", "driver", "driver")
    ]
    async with (
        course_client(course_system, rider) as ann,
        course_client(course_system, winner) as dan,
        course_client(course_system, loser) as eve,
    ):
        await ann.send(REQUEST)
        offered = await dan.until_offered()
        await eve.until(offered["id"], "REQUESTED")
        accept = {"type": "update.trip", "data": {"id": offered["id"], "status": "STARTED"}}
        await dan.send(accept)
        await dan.until(offered["id"], "STARTED")
        await eve.send(accept)  # too late: refused, and told nothing it cannot show
        await ann.until(offered["id"], "STARTED")
        await ann.send(REQUEST)  # a second request while one is open: refused
        await dan.send({"type": "update.location", "data": {"lat": -36.85, "lng": 174.76}})
        for status in ("IN_PROGRESS", "COMPLETED"):
            await dan.send({"type": "update.trip", "data": {"id": offered["id"], "status": status}})
            await dan.until(offered["id"], status)
        completed = await ann.until(offered["id"], "COMPLETED")
        await eve.settle()
    assert completed["driver"]["id"] == winner.id
    # The loser still lists the offer as the course's own server left it: requested.
    assert eve.trips[offered["id"]]["status"] == "REQUESTED"
    assert [frame["data"]["status"] for frame in ann.frames] == [
        "STARTED",
        "IN_PROGRESS",
        "COMPLETED",
    ]


async def until_status(
    http: httpx.AsyncClient, account: Account, trip_id: str, status: str, client: CourseClient
) -> None:
    """Until the trip has `status` over HTTP (a change its sockets in the course's
    dialect are told nothing of), each round trip to the client's socket in between."""
    async with asyncio.timeout(REQUEST_TIMEOUT_SECONDS + 15):
        while True:
            response = await http.get(
                f"/api/trip/{trip_id}/", headers={"Authorization": f"Bearer {account.access}"}
            )
            if response.json()["status"] == status:
                return
            await client.settle()
            await asyncio.sleep(0.1)  # a poll, well under the socket's rate limit


async def test_a_cancel_a_timeout_and_a_resume_show_as_the_course_shows_them(
    course_system: str, http: httpx.AsyncClient
) -> None:
    rider, driver = [await create_account(http, group) for group in ("rider", "driver")]
    async with course_client(course_system, driver) as dan:
        ann_socket = course_client(course_system, rider)
        ann = await ann_socket.__aenter__()
        # Cancelled before anyone accepted: nothing the course's pages could show.
        await ann.send(REQUEST)
        cancelled = await dan.until_offered()
        await ann.send(
            {"type": "update.trip", "data": {"id": cancelled["id"], "status": "CANCELLED"}}
        )
        await until_status(http, rider, cancelled["id"], "CANCELLED", ann)
        # Nobody accepts this one: it times out (seen over HTTP; its sockets are told
        # nothing the course's pages could show).
        await ann.send(REQUEST)
        timed_out = await dan.until_offered(other_than=frozenset({cancelled["id"]}))
        await until_status(http, rider, timed_out["id"], "CANCELLED", ann)
        # Accepted, then cancelled by the rider: both see it end.
        await ann.send(REQUEST)
        taken = await dan.until_offered(other_than=frozenset({cancelled["id"], timed_out["id"]}))
        await dan.send({"type": "update.trip", "data": {"id": taken["id"], "status": "STARTED"}})
        await ann.until(taken["id"], "STARTED")
        await ann.send({"type": "update.trip", "data": {"id": taken["id"], "status": "CANCELLED"}})
        await ann.until(taken["id"], "CANCELLED")
        await dan.until(taken["id"], "CANCELLED")
        # The rider's connection drops; a new socket without `since` is sent again what
        # the dropped one was sent, as the course's pages show it.
        ann.ws.transport.abort()
        with contextlib.suppress(Exception):
            await ann_socket.__aexit__(None, None, None)
    async with course_client(course_system, rider) as again:
        await again.until(taken["id"], "CANCELLED")
    assert {frame["data"]["id"] for frame in ann.frames} == {taken["id"]}
    assert set(again.trips) == {taken["id"]}
