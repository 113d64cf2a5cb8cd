"""What a gateway believes about its users follows every notification its sockets are
sent, whatever brought it (PROTOCOL D1, "One truth"): after its broker link was cut
while a trip moved on through another gateway, and when a user's second device opens
while a notification is on its way.

Gateway G reaches RabbitMQ through a relay the test can cut or hold; gateway H and
the worker reach it directly. The driver has a socket on each gateway.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx
import pytest
from websockets.asyncio.client import ClientConnection

from shared.locations import EARTH_RADIUS_M
from shared.settings import Settings
from tests.chaos.relay import Relay
from tests.clients import Account, about, connect, create_account, receive_until, send
from tools.processes import ServiceProcess, start_dispatcher, start_gateway

REQUEST = {"type": "create.trip", "data": {"pick_up_address": "A", "drop_off_address": "B"}}
# Somewhere no other test puts its drivers.
CENTRE = {"lat": -41.2865, "lng": 174.7762}
METRES_PER_DEGREE_OF_LATITUDE = EARTH_RADIUS_M * math.pi / 180


@dataclass
class TwoGateways:
    relay: Relay
    behind_relay: str  # G
    direct: str  # H

    async def wait_until_ready(self, ready: bool) -> None:
        """G's /readyz says whether its broker connection is up."""
        async with httpx.AsyncClient(timeout=5) as http:
            while True:
                response = await http.get(f"{self.behind_relay}/readyz")
                if (response.status_code == 200) == ready:
                    return
                await asyncio.sleep(0.1)


@pytest.fixture
async def gateways(isolated_settings: Settings, tmp_path: Path) -> AsyncIterator[TwoGateways]:
    broker = urlsplit(isolated_settings.amqp_url)
    relay = Relay(broker.hostname or "127.0.0.1", broker.port or 5672)
    credentials = f"{broker.username}:{broker.password}"
    through_relay = urlunsplit(
        broker._replace(netloc=f"{credentials}@127.0.0.1:{await relay.start()}")
    )
    processes: list[ServiceProcess] = []
    try:
        g, url_g = await asyncio.to_thread(
            start_gateway, replace(isolated_settings, amqp_url=through_relay), tmp_path
        )
        processes.append(g)
        h, url_h = await asyncio.to_thread(start_gateway, isolated_settings, tmp_path)
        processes.append(h)
        processes.append(
            await asyncio.to_thread(start_dispatcher, isolated_settings, tmp_path / "worker.log")
        )
        yield TwoGateways(relay, url_g, url_h)
    finally:
        relay.release()
        await relay.cut()
        for process in processes:
            process.stop()


@contextlib.asynccontextmanager
async def opened(base_url: str, account: Account) -> AsyncIterator[ClientConnection]:
    async with await connect(base_url, account.access) as ws:
        yield ws


def north_of(metres: float) -> dict[str, float]:
    return {"lat": CENTRE["lat"] + metres / METRES_PER_DEGREE_OF_LATITUDE, "lng": CENTRE["lng"]}


def is_location(frame: dict[str, Any]) -> bool:
    return frame.get("type") == "driver.location"


async def accepted_trip(rider_ws: ClientConnection, driver_ws: ClientConnection) -> dict[str, Any]:
    """The rider requests a trip (offered to every free driver) and the driver accepts it."""
    await send(rider_ws, REQUEST)
    trip = (await receive_until(rider_ws, lambda f: f.get("type") == "trip.requested"))["data"]
    await receive_until(driver_ws, about(trip["id"], "trip.requested"))
    await step(driver_ws, trip["id"], "STARTED", "trip.accepted")
    return dict(trip)


async def offered_nearby(rider_ws: ClientConnection, driver_ws: ClientConnection) -> dict[str, Any]:
    """The offer the driver gets of a trip the rider requests 10 m from them. Until the
    workers' index holds the driver's report (it travels in the next batch), the
    request is offered to no one: it is cancelled and asked again."""
    while True:
        await send(
            rider_ws, {"type": "create.trip", "data": {**REQUEST["data"], "pick_up": north_of(10)}}
        )
        requested = await receive_until(rider_ws, lambda f: f.get("type") == "trip.requested")
        trip_id = requested["data"]["id"]
        try:
            return await receive_until(driver_ws, about(trip_id, "trip.requested"), 2)
        except TimeoutError:
            cancel = {"type": "update.trip", "data": {"id": trip_id, "status": "CANCELLED"}}
            await send(rider_ws, cancel)
            await receive_until(rider_ws, about(trip_id, "trip.cancelled"))


async def step(driver_ws: ClientConnection, trip_id: str, status: str, event: str) -> None:
    """The driver moves the trip on (STARTED is the accept) and sees it done."""
    await send(driver_ws, {"type": "update.trip", "data": {"id": trip_id, "status": status}})
    answer = await receive_until(
        driver_ws, lambda f: f.get("type") == "error" or about(trip_id, event)(f)
    )
    assert answer["type"] == event, answer


async def test_a_trip_finished_elsewhere_during_a_broker_outage_frees_the_driver_here(
    gateways: TwoGateways,
) -> None:
    async with httpx.AsyncClient(base_url=gateways.direct, timeout=10) as http:
        rider, driver, neighbour = [
            await create_account(http, group) for group in ("rider", "driver", "rider")
        ]
    async with (
        opened(gateways.behind_relay, rider) as rider_g,
        opened(gateways.behind_relay, driver) as driver_g,
        opened(gateways.direct, driver) as driver_h,
        opened(gateways.direct, neighbour) as neighbour_h,
    ):
        trip = await accepted_trip(rider_g, driver_h)
        await receive_until(rider_g, about(trip["id"], "trip.accepted"))
        await receive_until(driver_g, about(trip["id"], "trip.accepted"))

        await gateways.relay.cut()
        await gateways.wait_until_ready(False)
        await step(driver_h, trip["id"], "IN_PROGRESS", "trip.picked_up")
        await step(driver_h, trip["id"], "COMPLETED", "trip.completed")
        await gateways.relay.restore()
        await gateways.wait_until_ready(True)
        # G's sockets are sent what they missed, read back from the log...
        await receive_until(rider_g, about(trip["id"], "trip.completed"))
        await receive_until(driver_g, about(trip["id"], "trip.completed"))

        # ...and G believes it too: the driver's position goes to dispatch, not to the
        # former rider, and the driver is offered a trip 10 m away on G.
        await send(driver_g, {"type": "update.location", "data": CENTRE})
        offered = await offered_nearby(neighbour_h, driver_g)
        assert offered["data"]["distance_m"] == pytest.approx(10, abs=1)
        marker = {"type": "echo.message", "data": "after the offer"}
        await send(rider_g, marker)
        seen = []
        while (frame := await receive_until(rider_g, lambda f: True)) != marker:
            seen.append(frame)
        assert not [frame for frame in seen if is_location(frame)]


async def test_a_trip_accepted_elsewhere_during_a_broker_outage_shows_the_car_to_its_rider_here(
    gateways: TwoGateways,
) -> None:
    async with httpx.AsyncClient(base_url=gateways.direct, timeout=10) as http:
        rider, driver = [await create_account(http, group) for group in ("rider", "driver")]
    async with (
        opened(gateways.behind_relay, rider) as rider_g,
        opened(gateways.behind_relay, driver) as driver_g,
        opened(gateways.direct, driver) as driver_h,
    ):
        await send(rider_g, REQUEST)
        trip = (await receive_until(rider_g, lambda f: f.get("type") == "trip.requested"))["data"]
        await receive_until(driver_h, about(trip["id"], "trip.requested"))

        await gateways.relay.cut()
        await gateways.wait_until_ready(False)
        await step(driver_h, trip["id"], "STARTED", "trip.accepted")
        await gateways.relay.restore()
        await gateways.wait_until_ready(True)
        await receive_until(driver_g, about(trip["id"], "trip.accepted"))
        await receive_until(rider_g, about(trip["id"], "trip.accepted"))

        # G knows the trip is under way: the driver's position reaches its rider.
        await send(driver_g, {"type": "update.location", "data": CENTRE})
        where = await receive_until(rider_g, is_location)
        assert where["data"]["trip_id"] == trip["id"]


async def test_a_second_device_opening_while_a_notification_is_on_its_way_hides_it_from_none(
    gateways: TwoGateways,
) -> None:
    async with httpx.AsyncClient(base_url=gateways.direct, timeout=10) as http:
        rider, driver = [await create_account(http, group) for group in ("rider", "driver")]
    async with (
        opened(gateways.behind_relay, rider) as phone,
        opened(gateways.direct, driver) as driver_h,
    ):
        await send(phone, REQUEST)
        requested = await receive_until(phone, lambda f: f.get("type") == "trip.requested")
        trip = requested["data"]
        await receive_until(driver_h, about(trip["id"], "trip.requested"))

        # The accept is committed, and its notification to the rider held on its way to G.
        gateways.relay.hold()
        await step(driver_h, trip["id"], "STARTED", "trip.accepted")
        async with opened(gateways.behind_relay, rider) as laptop:
            on_laptop = await receive_until(laptop, about(trip["id"], "trip.accepted"))
            gateways.relay.release()
            on_phone = await receive_until(phone, about(trip["id"], "trip.accepted"))
    assert on_phone["seq"] == on_laptop["seq"] == requested["seq"] + 1
