"""Dispatch by distance end to end (PROTOCOL C3), on a system of this module's own:
two gateways and three workers on a database and broker prefix of their own, with a
small radius, few offers per ring and short rings, so that widening and staleness
show within seconds.

Drivers are placed due north of a pick-up point at known distances (on one meridian
the straight-line distance is exact), each test in a city of its own so that no
test's drivers are near another's trips.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import orjson
import pytest
from websockets.asyncio.client import ClientConnection

from shared.locations import EARTH_RADIUS_M
from shared.migrate import drop_database, migrate, with_database
from shared.settings import Settings
from tests.clients import Account, about, connect, create_account, receive, receive_until, send
from tools.cleanup import delete_broker_objects, unique_name
from tools.processes import ServiceProcess, start_dispatcher, start_gateway

RADIUS_M = 1000
MAX_OFFERS = 2
WIDEN_SECONDS = 3
STALE_SECONDS = 4
# Drivers in these tests report this often, as a driver's app does while it runs.
REPORT_EVERY_SECONDS = 1.0
METRES_PER_DEGREE_OF_LATITUDE = EARTH_RADIUS_M * math.pi / 180
ADDRESSES = {"pick_up_address": "Stationsplein 1", "drop_off_address": "Dam 1"}


@dataclass
class City:
    """This module's system: its settings, its gateways' URLs and its workers."""

    settings: Settings
    gateways: list[str]
    workers: list[ServiceProcess]
    log_dir: Path

    def start_workers(self, count: int) -> None:
        for _ in range(count):
            number = len(self.workers)
            self.workers.append(
                start_dispatcher(self.settings, self.log_dir / f"city-dispatcher-{number}.log")
            )

    def stop_workers(self) -> None:
        while self.workers:
            worker = self.workers.pop()
            assert worker.stop() == 0, worker.log()


@pytest.fixture(scope="module")
def city(settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[City]:
    database_url = with_database(settings.database_url, unique_name("city"))
    migrate(database_url)
    city_settings = replace(
        settings,
        database_url=database_url,
        broker_prefix=unique_name("city").replace("_", "-"),
        log_level="INFO",
        dispatch_radius_meters=RADIUS_M,
        dispatch_max_offers=MAX_OFFERS,
        dispatch_widen_seconds=WIDEN_SECONDS,
        location_stale_seconds=STALE_SECONDS,
    )
    log_dir = tmp_path_factory.mktemp("city-logs")
    gateways: list[tuple[ServiceProcess, str]] = []
    system = City(city_settings, [], [], log_dir)
    try:
        for _ in range(2):
            gateways.append(start_gateway(city_settings, log_dir))
            system.gateways.append(gateways[-1][1])
        system.start_workers(3)
        yield system
    finally:
        system.stop_workers()
        for process, _ in gateways:
            process.stop()
        asyncio.run(delete_broker_objects(city_settings))
        drop_database(database_url)


@pytest.fixture
async def http(city: City) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=city.gateways[0], timeout=10) as client:
        yield client


@pytest.fixture
async def db(city: City) -> AsyncIterator[asyncpg.Connection]:
    connection = await asyncpg.connect(city.settings.database_url)
    yield connection
    await connection.close()


def north_of(centre: dict[str, float], metres: float) -> dict[str, float]:
    return {"lat": centre["lat"] + metres / METRES_PER_DEGREE_OF_LATITUDE, "lng": centre["lng"]}


@dataclass
class Driver:
    account: Account
    ws: ClientConnection
    metres: float


@contextlib.asynccontextmanager
async def drivers_at(
    http: httpx.AsyncClient, city: City, centre: dict[str, float], distances: list[float]
) -> AsyncIterator[list[Driver]]:
    """Drivers this far north of `centre`, on alternate gateways, who keep reporting
    where they are; yielded once every worker's index holds them."""
    async with contextlib.AsyncExitStack() as stack:
        drivers = []
        for number, metres in enumerate(distances):
            account = await create_account(http, "driver")
            gateway = city.gateways[number % len(city.gateways)]
            ws = await stack.enter_async_context(await connect(gateway, account.access))
            drivers.append(Driver(account, ws, metres))
        reporting = [
            asyncio.create_task(keep_reporting(d.ws, north_of(centre, d.metres))) for d in drivers
        ]
        try:
            await until_dispatch_knows(http, city, drivers, centre)
            yield drivers
        finally:
            for task in reporting:
                task.cancel()
            await asyncio.gather(*reporting, return_exceptions=True)


async def keep_reporting(ws: ClientConnection, point: dict[str, float]) -> None:
    while True:
        await send(ws, {"type": "update.location", "data": point})
        await asyncio.sleep(REPORT_EVERY_SECONDS)


async def until_dispatch_knows(
    http: httpx.AsyncClient, city: City, drivers: list[Driver], centre: dict[str, float]
) -> None:
    """Wait until a probe trip at `centre` with a radius holding them all is offered to
    each driver by name (an offer with `distance_m`): then every worker that could
    take a trip knows them. The probe is cancelled, and each driver told so."""
    rider = await create_account(http, "rider")
    async with await connect(city.gateways[0], rider.access) as rider_ws:
        for driver in drivers:
            # Each probe's first ring holds only the driver asked about.
            probe_centre = north_of(centre, driver.metres)
            while True:
                trip = await request(rider_ws, probe_centre)
                try:
                    # A driver dispatch does not know yet is offered nothing (a driver
                    # without a location gets only trips without a pick-up point).
                    offer = await receive_until(
                        driver.ws, lambda f, t=trip: about(t["id"])(f), wait_seconds=2
                    )
                except TimeoutError:
                    await cancel(rider_ws, trip)
                    continue
                await cancel(rider_ws, trip)
                await receive_until(driver.ws, about(trip["id"], "trip.cancelled"))
                if offer["type"] == "trip.requested" and "distance_m" in offer["data"]:
                    break


async def request(rider_ws: ClientConnection, pick_up: dict[str, float]) -> dict[str, Any]:
    await send(rider_ws, {"type": "create.trip", "data": {**ADDRESSES, "pick_up": pick_up}})
    frame = await receive_until(rider_ws, lambda f: f["type"] in ("trip.requested", "error"))
    assert frame["type"] == "trip.requested", frame
    return dict(frame["data"])


async def cancel(rider_ws: ClientConnection, trip: dict[str, Any]) -> None:
    await send(rider_ws, {"type": "update.trip", "data": {"id": trip["id"], "status": "CANCELLED"}})
    await receive_until(rider_ws, about(trip["id"], "trip.cancelled"))


async def offered_to(db: asyncpg.Connection, trip: dict[str, Any]) -> dict[int, int]:
    """Who the open trip was offered to by name so far, and in which ring."""
    rows = await db.fetch(
        "SELECT driver_id, ring FROM trip_offers WHERE trip_id = $1::uuid", trip["id"]
    )
    return {row["driver_id"]: row["ring"] for row in rows}


async def test_offers_go_to_the_nearest_in_rings_that_widen_and_never_beyond_the_radius(
    http: httpx.AsyncClient, city: City, db: asyncpg.Connection
) -> None:
    centre = {"lat": 48.8566, "lng": 2.3522}
    # Rings: 1,000 m at once (the two nearest), 2,000 m after WIDEN_SECONDS, 4,000 m
    # after twice that; the driver 9 km away is in none of them.
    distances = [300.0, 100.0, 1500.0, 600.0, 3500.0, 9000.0]
    async with drivers_at(http, city, centre, distances) as drivers:
        rider = await create_account(http, "rider")
        async with await connect(city.gateways[1], rider.access) as rider_ws:
            trip = await request(rider_ws, centre)
            requested_at = time.monotonic()

            async def offer_to(driver: Driver) -> tuple[float, dict[str, Any]]:
                offer = await receive_until(
                    driver.ws, about(trip["id"], "trip.requested"), wait_seconds=20
                )
                return time.monotonic() - requested_at, offer

            received = await asyncio.gather(*(offer_to(d) for d in drivers[:5]))
            rings = await offered_to(db, trip)
            await cancel(rider_ws, trip)
            withdrawn = await asyncio.gather(
                *(receive_until(d.ws, about(trip["id"], "trip.cancelled")) for d in drivers[:5])
            )

    by_distance = {
        d.metres: (after, offer) for d, (after, offer) in zip(drivers[:5], received, strict=True)
    }
    for metres, (_, offer) in by_distance.items():
        assert offer["data"]["distance_m"] == pytest.approx(metres, abs=0.2)
    ring_of = {d.metres: rings[d.account.id] for d in drivers[:5]}
    assert ring_of == {100.0: 1, 300.0: 1, 600.0: 2, 1500.0: 2, 3500.0: 3}
    assert drivers[5].account.id not in rings
    # A ring comes no sooner than its time: the nearest at once, the rest after it.
    assert by_distance[600.0][0] >= WIDEN_SECONDS
    assert by_distance[1500.0][0] >= WIDEN_SECONDS
    assert by_distance[3500.0][0] >= 2 * WIDEN_SECONDS
    assert max(by_distance[100.0][0], by_distance[300.0][0]) < WIDEN_SECONDS
    assert all(frame["type"] == "trip.cancelled" for frame in withdrawn)


async def test_a_stale_location_is_ignored(
    http: httpx.AsyncClient, city: City, db: asyncpg.Connection
) -> None:
    centre = {"lat": 40.4168, "lng": -3.7038}
    near = await create_account(http, "driver")
    async with (
        drivers_at(http, city, centre, [800.0]) as (fresh,),
        await connect(city.gateways[0], near.access) as near_ws,
    ):
        # Right at the pick-up, but reported once only.
        await send(near_ws, {"type": "update.location", "data": north_of(centre, 10)})
        await until_stale(near_ws)
        rider = await create_account(http, "rider")
        async with await connect(city.gateways[1], rider.access) as rider_ws:
            trip = await request(rider_ws, centre)
            offer = await receive_until(fresh.ws, about(trip["id"], "trip.requested"))
            rings = await offered_to(db, trip)
            await cancel(rider_ws, trip)

    assert offer["data"]["distance_m"] == pytest.approx(800.0, abs=0.2)
    assert rings == {fresh.account.id: 1}


async def until_stale(ws: ClientConnection) -> None:
    """A report's age is what is being tested: let the clock run past its freshness
    (while the socket stays open and answering)."""
    deadline = time.monotonic() + STALE_SECONDS + 1
    while time.monotonic() < deadline:
        await send(ws, {"type": "echo.message", "data": "still here"})
        assert (await receive(ws))["type"] == "echo.message"
        await asyncio.sleep(0.5)


HOSTILE_LOCATIONS = [
    ('{"type":"update.location","data":{"lat":NaN,"lng":4.9}}', "invalid_json"),
    ('{"type":"update.location","data":{"lat":1e400,"lng":4.9}}', "invalid_json"),
    ('{"type":"update.location","data":{"lat":"52.3","lng":4.9}}', "invalid_data"),
    ('{"type":"update.location","data":{"lat":true,"lng":4.9}}', "invalid_data"),
    ('{"type":"update.location","data":{"lat":91,"lng":4.9}}', "invalid_data"),
    ('{"type":"update.location","data":{"lat":52.3,"lng":-180.5}}', "invalid_data"),
    ('{"type":"update.location","data":{"lat":' + "9" * 400 + ',"lng":4.9}}', "invalid_json"),
    ('{"type":"update.location","data":{"lat":52.3}}', "invalid_data"),
    ('{"type":"update.location","data":[52.3,4.9]}', "invalid_data"),
    ('{"type":"update.location","data":{"lat":52.3,"lng":4.9,"heading":400}}', "invalid_data"),
    ('{"type":"update.location","data":{"lat":52.3,"lng":4.9,"speed_mps":-1}}', "invalid_data"),
]


async def test_hostile_coordinates_get_error_frames_and_the_socket_stays_open(
    http: httpx.AsyncClient, city: City
) -> None:
    driver = await create_account(http, "driver")
    async with await connect(city.gateways[0], driver.access) as ws:
        replies = []
        for raw, _ in HOSTILE_LOCATIONS:
            await ws.send(raw)
            replies.append(await receive(ws))
        await send(ws, {"type": "echo.message", "data": "still here"})
        echo = await receive(ws)

    for (raw, code), reply in zip(HOSTILE_LOCATIONS, replies, strict=True):
        assert reply["type"] == "error", raw
        assert reply["data"]["code"] == code, (raw, reply)
        assert reply["data"]["message"], raw
    assert echo == {"type": "echo.message", "data": "still here"}


async def test_a_rider_cannot_report_a_location(http: httpx.AsyncClient, city: City) -> None:
    rider = await create_account(http, "rider")
    async with await connect(city.gateways[0], rider.access) as ws:
        await send(ws, {"type": "update.location", "data": {"lat": 52.3, "lng": 4.9}})
        reply = await receive(ws)

    assert reply["type"] == "error"
    assert reply["data"]["code"] == "forbidden"
    assert reply["data"]["request"] == "update.location"


async def test_drivers_on_two_gateways_race_for_trips_through_three_workers_one_wins_each(
    http: httpx.AsyncClient, city: City, db: asyncpg.Connection
) -> None:
    centre = {"lat": 41.9028, "lng": 12.4964}
    async with drivers_at(http, city, centre, [50.0, 150.0, 250.0, 350.0]) as drivers:
        rider = await create_account(http, "rider")
        async with await connect(city.gateways[0], rider.access) as rider_ws:
            for _ in range(5):
                trip = await request(rider_ws, centre)
                accept = {"type": "update.trip", "data": {"id": trip["id"], "status": "STARTED"}}
                # Every driver accepts at once, offered or not: a driver may take any
                # open request they see in their trip list.
                await asyncio.gather(*(d.ws.send(orjson.dumps(accept).decode()) for d in drivers))
                outcomes = await asyncio.gather(*(outcome(d, trip) for d in drivers))
                winners = [
                    d for d, kind in zip(drivers, outcomes, strict=True) if kind == "trip.accepted"
                ]
                stored = await db.fetchval(
                    "SELECT driver_id FROM trips WHERE id = $1::uuid", trip["id"]
                )
                assert len(winners) == 1, outcomes
                assert stored == winners[0].account.id
                await finish(winners[0], trip)
                await receive_until(rider_ws, about(trip["id"], "trip.completed"))


async def outcome(driver: Driver, trip: dict[str, Any]) -> str:
    """What the driver's accept came to: the trip, or the error refusing it."""
    frame = await receive_until(
        driver.ws,
        lambda f: (
            (f["type"] == "trip.accepted" and f["data"]["id"] == trip["id"])
            or (f["type"] == "error" and f["data"]["trip_id"] == trip["id"])
        ),
    )
    return str(frame["type"])


async def finish(driver: Driver, trip: dict[str, Any]) -> None:
    """Pick the rider up, then drop them off: each step once the last one was applied
    (several workers may otherwise take the two commands in either order)."""
    for status, event in (("IN_PROGRESS", "trip.picked_up"), ("COMPLETED", "trip.completed")):
        await send(driver.ws, {"type": "update.trip", "data": {"id": trip["id"], "status": status}})
        await receive_until(driver.ws, about(trip["id"], event))


async def test_a_ring_due_while_every_worker_was_down_fires_when_one_returns(
    http: httpx.AsyncClient, city: City, db: asyncpg.Connection
) -> None:
    centre = {"lat": 59.3293, "lng": 18.0686}
    async with drivers_at(http, city, centre, [100.0, 1500.0]) as (near, far):
        rider = await create_account(http, "rider")
        async with await connect(city.gateways[0], rider.access) as rider_ws:
            trip = await request(rider_ws, centre)
            await receive_until(near.ws, about(trip["id"], "trip.requested"))
            city.stop_workers()
            # The second ring falls due while no worker runs: let the database's clock
            # pass it.
            due_in = await db.fetchval(
                "SELECT extract(epoch FROM widen_at - now()) FROM trips WHERE id = $1::uuid",
                trip["id"],
            )
            await asyncio.sleep(max(0.0, float(due_in)) + 0.5)
            city.start_workers(1)
            offer = await receive_until(far.ws, about(trip["id"], "trip.requested"))
            city.start_workers(2)
            await cancel(rider_ws, trip)

    assert offer["data"]["distance_m"] == pytest.approx(1500.0, abs=0.2)
