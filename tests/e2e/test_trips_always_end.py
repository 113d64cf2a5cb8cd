"""PROTOCOL D1 end to end: who sees an open request, trips that always end, request ids
like payment APIs, and refusals that cost the database a bounded amount per user.

On a system of this module's own (a gateway and two workers on a database and broker
prefix of their own) with a lost-driver time of LOST_SECONDS, so that a driver who
vanishes loses their trip within seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from websockets.asyncio.client import ClientConnection

from dispatcher import retention
from dispatcher.worker import REFUSALS_KEPT_PER_USER
from shared.commands import command_id
from shared.locations import EARTH_RADIUS_M
from shared.migrate import drop_database, migrate, with_database
from shared.settings import Settings
from tests.clients import (
    Account,
    about,
    connect,
    create_account,
    is_error,
    receive,
    receive_until,
    send,
)
from tools.cleanup import delete_broker_objects, unique_name
from tools.processes import ServiceProcess, start_dispatcher, start_gateway

LOST_SECONDS = 2
RADIUS_M = 1000
# Rings never widen within a test: who was offered a trip is its first ring's drivers.
WIDEN_SECONDS = 600
METRES_PER_DEGREE_OF_LATITUDE = EARTH_RADIUS_M * math.pi / 180
ADDRESSES = {"pick_up_address": "1 Quay Street", "drop_off_address": "2 Hill Road"}
# Long enough for a sweep that falls due after LOST_SECONDS, and then some.
LOST_WITHIN_SECONDS = 20


@dataclass
class System:
    settings: Settings
    base_url: str


@pytest.fixture(scope="module")
def system(settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[System]:
    database_url = with_database(settings.database_url, unique_name("ends"))
    migrate(database_url)
    own = replace(
        settings,
        database_url=database_url,
        broker_prefix=unique_name("ends").replace("_", "-"),
        log_level="INFO",
        driver_lost_seconds=LOST_SECONDS,
        dispatch_radius_meters=RADIUS_M,
        dispatch_widen_seconds=WIDEN_SECONDS,
    )
    log_dir: Path = tmp_path_factory.mktemp("ends-logs")
    gateway, base_url = start_gateway(own, log_dir)
    workers: list[ServiceProcess] = []
    try:
        workers = [start_dispatcher(own, log_dir / f"ends-dispatcher-{n}.log") for n in range(2)]
        yield System(own, base_url)
    finally:
        for worker in workers:
            assert worker.stop() == 0, worker.log()
        gateway.stop()
        asyncio.run(delete_broker_objects(own))
        drop_database(database_url)


@pytest.fixture
async def http(system: System) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=system.base_url, timeout=10) as client:
        yield client


@pytest.fixture
async def db(system: System) -> AsyncIterator[asyncpg.Connection]:
    connection = await asyncpg.connect(system.settings.database_url)
    yield connection
    await connection.close()


def north_of(centre: dict[str, float], metres: float) -> dict[str, float]:
    return {"lat": centre["lat"] + metres / METRES_PER_DEGREE_OF_LATITUDE, "lng": centre["lng"]}


def bearer(account: Account) -> dict[str, str]:
    return {"Authorization": f"Bearer {account.access}"}


async def request(ws: ClientConnection, **data: Any) -> dict[str, Any]:
    await send(ws, {"type": "create.trip", "data": {**ADDRESSES, **data}})
    frame = await receive_until(ws, lambda f: f["type"] in ("trip.requested", "error"))
    assert frame["type"] == "trip.requested", frame
    return dict(frame["data"])


async def change(ws: ClientConnection, trip: dict[str, Any], status: str, event: str) -> None:
    await send(ws, {"type": "update.trip", "data": {"id": trip["id"], "status": status}})
    frame = await receive_until(ws, lambda f: about(trip["id"], event)(f) or is_error(f))
    assert frame["type"] == event, frame


async def handled(ws: ClientConnection) -> list[dict[str, Any]]:
    """Every frame the socket receives until the echo of a marker sent now."""
    marker = f"marker-{uuid.uuid4().hex}"
    await send(ws, {"type": "echo.message", "data": marker})
    before = []
    while (frame := await receive(ws)) != {"type": "echo.message", "data": marker}:
        before.append(frame)
    return before


async def known_to_dispatch(
    base_url: str, http: httpx.AsyncClient, driver_ws: ClientConnection, at: dict[str, float]
) -> None:
    """Report `at` until a probe trip there is offered to the driver by name (with
    `distance_m`): then every worker's index holds them. Each probe is cancelled."""
    prober = await create_account(http, "rider")
    async with await connect(base_url, prober.access) as prober_ws:
        while True:
            await send(driver_ws, {"type": "update.location", "data": at})
            probe = await request(prober_ws, pick_up=at)
            try:
                # Offered to no one while the workers' index does not hold the report.
                offered = await receive_until(driver_ws, about(probe["id"]), wait_seconds=3)
            except TimeoutError:
                await change(prober_ws, probe, "CANCELLED", "trip.cancelled")
                continue
            await change(prober_ws, probe, "CANCELLED", "trip.cancelled")
            await receive_until(driver_ws, about(probe["id"], "trip.cancelled"))
            if "distance_m" in offered["data"]:
                return
            await asyncio.sleep(1)  # the gateway acts on one location a second


# Who sees an open request


async def test_a_request_with_a_pick_up_point_is_seen_and_accepted_only_by_its_ring(
    system: System, http: httpx.AsyncClient
) -> None:
    centre = {"lat": -33.8688, "lng": 151.2093}
    rider = await create_account(http, "rider")
    near, far, unlocated = [await create_account(http, "driver") for _ in range(3)]
    async with contextlib.AsyncExitStack() as stack:
        near_ws, far_ws, unlocated_ws = [
            await stack.enter_async_context(await connect(system.base_url, account.access))
            for account in (near, far, unlocated)
        ]
        await known_to_dispatch(system.base_url, http, near_ws, north_of(centre, 100))
        await known_to_dispatch(system.base_url, http, far_ws, north_of(centre, 50_000))
        rider_ws = await stack.enter_async_context(await connect(system.base_url, rider.access))

        trip = await request(rider_ws, pick_up=centre)
        offer = await receive_until(near_ws, about(trip["id"], "trip.requested"))
        seen = {}
        for account in (near, far, unlocated):
            listed = await http.get("/api/trip/?status=REQUESTED", headers=bearer(account))
            one = await http.get(f"/api/trip/{trip['id']}/", headers=bearer(account))
            seen[account.id] = (trip["id"] in [t["id"] for t in listed.json()], one.status_code)
        refusals = []
        for ws in (far_ws, unlocated_ws):
            await send(ws, {"type": "update.trip", "data": {"id": trip["id"], "status": "STARTED"}})
            refusals.append(await receive_until(ws, is_error))
        still = await http.get(f"/api/trip/{trip['id']}/", headers=bearer(rider))
        await change(rider_ws, trip, "CANCELLED", "trip.cancelled")
        # Every frame about the trip went out before its withdrawal reached `near`.
        await receive_until(near_ws, about(trip["id"], "trip.cancelled"))
        unlocated_got = await handled(unlocated_ws)
        far_got = await handled(far_ws)

    assert "distance_m" in offer["data"]
    assert seen == {near.id: (True, 200), far.id: (False, 404), unlocated.id: (False, 404)}
    for refusal in refusals:
        assert refusal["data"]["code"] == "trip_unavailable", refusal
        assert refusal["data"]["trip_id"] == trip["id"]
    assert still.json()["status"] == "REQUESTED"
    assert [f for f in unlocated_got + far_got if about(trip["id"])(f)] == []


async def test_a_request_without_a_pick_up_point_is_for_every_free_driver(
    system: System, http: httpx.AsyncClient
) -> None:
    rider, unlocated = await create_account(http, "rider"), await create_account(http, "driver")
    async with (
        await connect(system.base_url, unlocated.access) as driver_ws,
        await connect(system.base_url, rider.access) as rider_ws,
    ):
        trip = await request(rider_ws)
        await receive_until(driver_ws, about(trip["id"], "trip.requested"))
        listed = await http.get("/api/trip/?status=REQUESTED", headers=bearer(unlocated))
        await change(driver_ws, trip, "STARTED", "trip.accepted")
        await change(driver_ws, trip, "IN_PROGRESS", "trip.picked_up")
        await change(driver_ws, trip, "COMPLETED", "trip.completed")

    assert trip["id"] in [t["id"] for t in listed.json()]


# Trips always end


async def test_a_trip_whose_driver_vanished_ends_and_its_rider_may_request_again(
    system: System, http: httpx.AsyncClient
) -> None:
    staying_rider, leaving_rider = (
        await create_account(http, "rider"),
        await create_account(http, "rider"),
    )
    staying, leaving = await create_account(http, "driver"), await create_account(http, "driver")
    async with contextlib.AsyncExitStack() as stack:
        staying_ws, staying_rider_ws, leaving_rider_ws = [
            await stack.enter_async_context(await connect(system.base_url, account.access))
            for account in (staying, staying_rider, leaving_rider)
        ]
        kept = await request(staying_rider_ws)
        await change(staying_ws, kept, "STARTED", "trip.accepted")
        async with await connect(system.base_url, leaving.access) as leaving_ws:
            lost = await request(leaving_rider_ws)
            await change(leaving_ws, lost, "STARTED", "trip.accepted")
            await change(leaving_ws, lost, "IN_PROGRESS", "trip.picked_up")
        # The driver's phone died with the rider on board: nothing is heard from them.
        cancelled = await receive_until(
            leaving_rider_ws,
            about(lost["id"], "trip.cancelled"),
            wait_seconds=LOST_WITHIN_SECONDS,
        )
        again = await request(leaving_rider_ws)
        # The other trip's driver stayed connected all along (and changed nothing since
        # before the lost one's last change): it is still under way.
        still = await http.get(f"/api/trip/{kept['id']}/", headers=bearer(staying_rider))
        async with await connect(system.base_url, leaving.access) as back_ws:
            told = await receive_until(back_ws, about(lost["id"], "trip.cancelled"))

    assert cancelled["data"]["cancel_reason"] == "driver_lost"
    assert cancelled["data"]["status"] == "CANCELLED"
    assert "seq" in cancelled
    assert again["id"] != lost["id"]
    assert still.json()["status"] == "STARTED"
    assert told["event_id"] == cancelled["event_id"]


async def test_a_trip_whose_driver_was_deactivated_ends(
    system: System, http: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    rider, driver = await create_account(http, "rider"), await create_account(http, "driver")
    async with (
        await connect(system.base_url, rider.access) as rider_ws,
        await connect(system.base_url, driver.access) as driver_ws,
    ):
        trip = await request(rider_ws)
        await change(driver_ws, trip, "STARTED", "trip.accepted")
        await db.execute("UPDATE users SET is_active = false WHERE id = $1", driver.id)
        cancelled = await receive_until(
            rider_ws, about(trip["id"], "trip.cancelled"), wait_seconds=LOST_WITHIN_SECONDS
        )
        again = await request(rider_ws)

    assert cancelled["data"]["cancel_reason"] == "driver_lost"
    assert again["status"] == "REQUESTED"


# Request ids, like payment APIs


async def test_a_request_id_reused_for_a_different_request_is_refused_and_the_first_stands(
    system: System, http: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    rider = await create_account(http, "rider")
    async with await connect(system.base_url, rider.access) as ws:
        await send(ws, {"type": "create.trip", "request_id": "home-1", "data": ADDRESSES})
        first = await receive_until(ws, lambda f: f["type"] in ("trip.requested", "error"))
        elsewhere = {**ADDRESSES, "drop_off_address": "99 Far Away Lane"}
        await send(ws, {"type": "create.trip", "request_id": "home-1", "data": elsewhere})
        other_data = await receive_until(ws, lambda f: f["type"] in ("trip.requested", "error"))
        cancel = {"id": first["data"]["id"], "status": "CANCELLED"}
        await send(ws, {"type": "update.trip", "request_id": "home-1", "data": cancel})
        other_type = await receive_until(ws, lambda f: f["type"] in ("trip.cancelled", "error"))
    trips = await db.fetch("SELECT id, status FROM trips WHERE rider_id = $1", rider.id)

    assert first["type"] == "trip.requested"
    for refusal in (other_data, other_type):
        assert refusal["type"] == "error", refusal
        assert refusal["data"]["code"] == "request_id_reused"
        assert refusal["data"]["request_id"] == "home-1"
    assert [(str(row["id"]), row["status"]) for row in trips] == [
        (first["data"]["id"], "REQUESTED")
    ]


async def test_a_request_id_used_again_after_its_retention_is_a_new_request(
    system: System, http: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    rider = await create_account(http, "rider")
    frame = {"type": "create.trip", "request_id": "work-1", "data": ADDRESSES}
    async with await connect(system.base_url, rider.access) as ws:
        await send(ws, frame)
        first = await receive_until(ws, lambda f: f["type"] in ("trip.requested", "error"))
        await change(ws, first["data"], "CANCELLED", "trip.cancelled")
        # A day and more later: the worker's pruning forgets the request id.
        await db.execute(
            "UPDATE processed_commands SET processed = processed - interval '25 hours'"
            " WHERE id = $1",
            command_id(rider.id, "work-1"),
        )
        await retention.prune(db, datetime.now(UTC), system.settings.notification_retention_seconds)
        await send(ws, frame)
        second = await receive_until(ws, lambda f: f["type"] in ("trip.requested", "error"))

    assert first["type"] == "trip.requested"
    assert second["type"] == "trip.requested", second
    assert second["data"]["id"] != first["data"]["id"]


# What one user can make the database keep


async def test_refusals_are_replies_and_what_they_keep_is_bounded_per_user(
    system: System, http: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    rider = await create_account(http, "rider")
    with_ids, without_ids = REFUSALS_KEPT_PER_USER + 30, 20
    missing = {"id": str(uuid.uuid4()), "status": "CANCELLED"}
    async with await connect(system.base_url, rider.access) as ws:
        for number in range(with_ids):
            await send(ws, {"type": "update.trip", "request_id": f"r-{number}", "data": missing})
        for _ in range(without_ids):
            await send(ws, {"type": "update.trip", "data": missing})
        refusals = [await receive_until(ws, is_error) for _ in range(with_ids + without_ids)]
        # A retry of a refused request remembered gets the same answer again.
        newest = f"r-{with_ids - 1}"
        await send(ws, {"type": "update.trip", "request_id": newest, "data": missing})
        retried = await receive_until(ws, is_error)
    kept = await db.fetchval("SELECT count(*) FROM processed_commands WHERE user_id = $1", rider.id)
    logged = await db.fetchval("SELECT count(*) FROM notifications WHERE user_id = $1", rider.id)

    assert {refusal["data"]["code"] for refusal in refusals} == {"not_found"}
    assert all("seq" not in refusal for refusal in refusals)
    assert logged == 0
    assert kept == REFUSALS_KEPT_PER_USER
    [first_answer] = [r for r in refusals if r["data"]["request_id"] == newest]
    assert retried == first_answer
