"""Offers have answers and windows, and the matched policy pairs requests optimally
(PROTOCOL D2), end to end: real gateways and workers on a database and broker prefix
of each system's own.

Rings here widen only after a minute, so any next ring a test sees within its receive
timeout went out because the last one said no. Drivers stand on one meridian, where
the straight-line distance is exact; each test in a city of its own.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from typing import Any

import asyncpg
import httpx
import pytest
from websockets.asyncio.client import ClientConnection

from shared.migrate import drop_database, migrate, with_database
from shared.settings import Settings
from tests.clients import about, connect, create_account, is_error, receive_until, send
from tests.e2e.test_dispatch_by_distance import (
    City,
    Driver,
    cancel,
    keep_reporting,
    north_of,
    request,
)
from tools.cleanup import delete_broker_objects, unique_name
from tools.processes import ServiceProcess, start_gateway

NEVER_SECONDS = 60
# The advisory lock a matching round takes (dispatcher.repository.try_match_lock).
MATCH_LOCK = "SELECT pg_advisory_lock(hashtextextended('match', 0))"
MATCH_UNLOCK = "SELECT pg_advisory_unlock(hashtextextended('match', 0))"


@contextlib.contextmanager
def system(
    settings: Settings,
    tmp_path_factory: pytest.TempPathFactory,
    name: str,
    *,
    gateways: int = 2,
    workers: int = 2,
    **overrides: Any,
) -> Iterator[City]:
    database_url = with_database(settings.database_url, unique_name(name))
    migrate(database_url)
    own = replace(
        settings,
        database_url=database_url,
        broker_prefix=unique_name(name).replace("_", "-"),
        **{
            "log_level": "INFO",
            "dispatch_radius_meters": 1000,
            "dispatch_max_offers": 1,
            "dispatch_widen_seconds": NEVER_SECONDS,
            # Nothing here waits for a location to go stale or a gateway to fall
            # silent; an empty ring would wait the minute above, so a loaded machine's
            # delays must not empty one.
            "location_stale_seconds": 15,
            "gateway_silent_seconds": 15,
            **overrides,
        },
    )
    log_dir = tmp_path_factory.mktemp(f"{name}-logs")
    started: list[tuple[ServiceProcess, str]] = []
    city = City(own, [], [], log_dir)
    try:
        for _ in range(gateways):
            started.append(start_gateway(own, log_dir))
            city.gateways.append(started[-1][1])
        city.start_workers(workers)
        yield city
    finally:
        city.stop_workers()
        for process, _ in started:
            process.stop()
        asyncio.run(delete_broker_objects(own))
        drop_database(database_url)


@pytest.fixture(scope="module")
def answers(settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[City]:
    """Offers open for a minute: only a decline withdraws one."""
    with system(settings, tmp_path_factory, "answers", offer_seconds=NEVER_SECONDS) as city:
        yield city


@pytest.fixture(scope="module")
def windows(settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[City]:
    """Offers open for a second."""
    with system(settings, tmp_path_factory, "windows", gateways=1, offer_seconds=1) as city:
        yield city


@pytest.fixture(scope="module")
def matched(settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[City]:
    """The matched policy, a round a second, on three workers."""
    with system(
        settings,
        tmp_path_factory,
        "matched",
        gateways=1,
        workers=3,
        offer_seconds=NEVER_SECONDS,
        dispatch_policy="matched",
        match_seconds=1,
        dispatch_radius_meters=5000,
    ) as city:
        yield city


@contextlib.asynccontextmanager
async def drivers_at(
    http: httpx.AsyncClient, city: City, centre: dict[str, float], distances: list[float]
) -> AsyncIterator[list[Driver]]:
    """Drivers this far north of `centre`, on alternate gateways, who keep reporting
    where they are; yielded once every worker that could offer a trip knows them."""
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


async def until_dispatch_knows(
    http: httpx.AsyncClient, city: City, drivers: list[Driver], centre: dict[str, float]
) -> None:
    """Probe trips at each driver until one is offered to them by name. Rings here widen
    only after a minute: a probe whose ring was empty (the index did not hold the
    driver yet) is cancelled and another made."""
    rider = await create_account(http, "rider")
    async with await connect(city.gateways[0], rider.access) as rider_ws:
        for driver in drivers:
            while True:
                trip = await request(rider_ws, north_of(centre, driver.metres))
                try:
                    offer = await receive_until(driver.ws, offer_of(trip), wait_seconds=3)
                except TimeoutError:
                    offer = None
                await cancel(rider_ws, trip)
                if offer is not None and "distance_m" in offer["data"]:
                    await receive_until(driver.ws, about(trip["id"], "trip.cancelled"))
                    break


@contextlib.asynccontextmanager
async def database(city: City) -> AsyncIterator[asyncpg.Connection]:
    connection = await asyncpg.connect(city.settings.database_url)
    try:
        yield connection
    finally:
        await connection.close()


async def offers_of(db: asyncpg.Connection, trip: dict[str, Any]) -> dict[int, tuple[int, Any]]:
    rows = await db.fetch(
        "SELECT driver_id, ring, answer FROM trip_offers WHERE trip_id = $1::uuid", trip["id"]
    )
    return {row["driver_id"]: (row["ring"], row["answer"]) for row in rows}


async def decline(ws: ClientConnection, trip: dict[str, Any]) -> None:
    await send(ws, {"type": "decline.trip", "data": {"id": trip["id"]}})


async def accept_refusal(ws: ClientConnection, trip: dict[str, Any]) -> dict[str, Any]:
    await send(ws, {"type": "update.trip", "data": {"id": trip["id"], "status": "STARTED"}})
    return await receive_until(
        ws,
        lambda f: (
            (is_error(f) and f["data"]["trip_id"] == trip["id"]) or f["type"] == "trip.accepted"
        ),
    )


def offer_of(trip: dict[str, Any]) -> Any:
    return about(trip["id"], "trip.requested")


def withdrawal_of(trip: dict[str, Any]) -> Any:
    return about(trip["id"], "trip.withdrawn")


async def test_a_decline_reaches_every_socket_of_the_driver_and_sends_the_trip_on_at_once(
    answers: City,
) -> None:
    centre = {"lat": 52.52, "lng": 13.405}
    async with (
        httpx.AsyncClient(base_url=answers.gateways[0], timeout=10) as http,
        drivers_at(http, answers, centre, [100.0, 1500.0]) as (near, far),
        await connect(answers.gateways[1], near.account.access) as near_elsewhere,
        database(answers) as db,
    ):
        rider = await create_account(http, "rider")
        async with await connect(answers.gateways[1], rider.access) as rider_ws:
            trip = await request(rider_ws, centre)
            await receive_until(near.ws, offer_of(trip))
            await receive_until(near_elsewhere, offer_of(trip))
            await decline(near.ws, trip)
            told = [
                await receive_until(near.ws, withdrawal_of(trip)),
                await receive_until(near_elsewhere, withdrawal_of(trip)),
            ]
            # Ring 1 said no: ring 2 goes out now, not after a minute.
            next_offer = await receive_until(far.ws, offer_of(trip))
            refused = await accept_refusal(near.ws, trip)
            stored = await offers_of(db, trip)
            await cancel(rider_ws, trip)

    for frame in told:
        assert frame["data"] == {"id": trip["id"], "version": trip["version"], "reason": "declined"}
        assert "seq" not in frame
    assert next_offer["data"]["distance_m"] == pytest.approx(1500.0, abs=0.2)
    assert refused["type"] == "error"
    assert refused["data"]["code"] == "trip_unavailable"
    assert stored == {near.account.id: (1, "declined"), far.account.id: (2, None)}


async def test_a_decliner_is_never_offered_the_trip_again_even_after_the_workers_restart(
    answers: City,
) -> None:
    centre = {"lat": 48.2082, "lng": 16.3738}
    async with (
        httpx.AsyncClient(base_url=answers.gateways[0], timeout=10) as http,
        drivers_at(http, answers, centre, [100.0, 1500.0, 3000.0]) as (first, second, third),
        database(answers) as db,
    ):
        rider = await create_account(http, "rider")
        async with await connect(answers.gateways[0], rider.access) as rider_ws:
            trip = await request(rider_ws, centre)
            await receive_until(first.ws, offer_of(trip))
            await decline(first.ws, trip)
            await receive_until(second.ws, offer_of(trip))
            # Every worker that saw the decline goes; new ones know it from Postgres.
            answers.stop_workers()
            answers.start_workers(2)
            # Once their index holds the drivers again (that is no answer's business).
            await until_dispatch_knows(http, answers, [third], centre)
            await decline(second.ws, trip)
            # Ring 3 (4,000 m) holds the first driver too, 100 m away; only the third
            # driver is offered the trip.
            offer = await receive_until(third.ws, offer_of(trip), wait_seconds=20)
            stored = await offers_of(db, trip)
            await cancel(rider_ws, trip)

    assert offer["data"]["distance_m"] == pytest.approx(3000.0, abs=0.2)
    assert stored == {
        first.account.id: (1, "declined"),
        second.account.id: (2, "declined"),
        third.account.id: (3, None),
    }


async def test_an_unanswered_offer_expires_and_the_trip_goes_to_the_next_driver(
    windows: City,
) -> None:
    centre = {"lat": 50.0755, "lng": 14.4378}
    async with (
        httpx.AsyncClient(base_url=windows.gateways[0], timeout=10) as http,
        drivers_at(http, windows, centre, [100.0, 1500.0]) as (near, far),
    ):
        rider = await create_account(http, "rider")
        async with await connect(windows.gateways[0], rider.access) as rider_ws:
            trip = await request(rider_ws, centre)
            await receive_until(near.ws, offer_of(trip))
            withdrawn = await receive_until(near.ws, withdrawal_of(trip))
            next_offer = await receive_until(far.ws, offer_of(trip))
            late = await accept_refusal(near.ws, trip)
            await cancel(rider_ws, trip)

    assert withdrawn["data"] == {"id": trip["id"], "version": trip["version"], "reason": "expired"}
    assert next_offer["data"]["distance_m"] == pytest.approx(1500.0, abs=0.2)
    assert late["type"] == "error"
    assert late["data"]["code"] == "trip_unavailable"


async def requests_in_one_round(
    db: asyncpg.Connection, riders: list[tuple[ClientConnection, dict[str, float]]]
) -> list[dict[str, Any]]:
    """The riders' requests, all made while the matching lock is held here, so that the
    first round after it is released sees them together."""
    await db.execute(MATCH_LOCK)
    try:
        return [await request(ws, pick_up) for ws, pick_up in riders]
    finally:
        await db.execute(MATCH_UNLOCK)


async def test_matched_pairs_two_riders_and_two_drivers_on_a_line_optimally(
    matched: City,
) -> None:
    # On a meridian: driver 1 at 0 m, rider A at 1,000 m, driver 2 at 1,100 m, rider B at
    # 2,000 m. Nearest-first would give A driver 2 (100 m) and B driver 1 (2,000 m).
    start = {"lat": 45.4642, "lng": 9.19}
    async with (
        httpx.AsyncClient(base_url=matched.gateways[0], timeout=10) as http,
        drivers_at(http, matched, start, [0.0, 1100.0]) as (one, two),
        database(matched) as db,
    ):
        rider_a = await create_account(http, "rider")
        rider_b = await create_account(http, "rider")
        async with (
            await connect(matched.gateways[0], rider_a.access) as a_ws,
            await connect(matched.gateways[0], rider_b.access) as b_ws,
        ):
            trip_a, trip_b = await requests_in_one_round(
                db, [(a_ws, north_of(start, 1000.0)), (b_ws, north_of(start, 2000.0))]
            )
            to_one = await receive_until(one.ws, lambda f: f["type"] == "trip.requested")
            to_two = await receive_until(two.ws, lambda f: f["type"] == "trip.requested")
            stored = {**await offers_of(db, trip_a), **await offers_of(db, trip_b)}
            await cancel(a_ws, trip_a)
            await cancel(b_ws, trip_b)

    assert to_one["data"]["id"] == trip_a["id"]
    assert to_one["data"]["distance_m"] == pytest.approx(1000.0, abs=0.2)
    assert to_two["data"]["id"] == trip_b["id"]
    assert to_two["data"]["distance_m"] == pytest.approx(900.0, abs=0.2)
    assert set(stored) == {one.account.id, two.account.id}


async def test_workers_matching_together_offer_each_request_to_one_driver(
    matched: City,
) -> None:
    start = {"lat": 41.3851, "lng": 2.1734}
    count = 6
    async with (
        httpx.AsyncClient(base_url=matched.gateways[0], timeout=10) as http,
        drivers_at(http, matched, start, [150.0 * n for n in range(count)]) as drivers,
        database(matched) as db,
        contextlib.AsyncExitStack() as stack,
    ):
        riders = []
        for n in range(count):
            account = await create_account(http, "rider")
            ws = await stack.enter_async_context(await connect(matched.gateways[0], account.access))
            riders.append((ws, north_of(start, 75.0 + 150.0 * n)))
        # Requested over several rounds, by three workers.
        trips = [await request(ws, pick_up) for ws, pick_up in riders]
        offered = await asyncio.gather(
            *(receive_until(d.ws, lambda f: f["type"] == "trip.requested") for d in drivers)
        )
        rows = await db.fetch(
            "SELECT trip_id::text, driver_id FROM trip_offers WHERE trip_id = ANY($1::uuid[])",
            [trip["id"] for trip in trips],
        )
        for (ws, _), trip in zip(riders, trips, strict=True):
            await cancel(ws, trip)

    per_trip: dict[str, list[int]] = {}
    for row in rows:
        per_trip.setdefault(row["trip_id"], []).append(row["driver_id"])
    assert sorted(per_trip) == sorted(trip["id"] for trip in trips)
    assert all(len(drivers_offered) == 1 for drivers_offered in per_trip.values())
    assert sorted(frame["data"]["id"] for frame in offered) == sorted(t["id"] for t in trips)


async def test_a_round_whose_worker_died_midway_is_taken_over(matched: City) -> None:
    start = {"lat": 38.7223, "lng": -9.1393}
    async with (
        httpx.AsyncClient(base_url=matched.gateways[0], timeout=10) as http,
        drivers_at(http, matched, start, [200.0]) as (driver,),
    ):
        rider = await create_account(http, "rider")
        async with await connect(matched.gateways[0], rider.access) as rider_ws:
            # A worker's round, as far as the database sees one: the round's lock (no
            # other round runs meanwhile), and the request locked for pairing...
            dying = await asyncpg.connect(matched.settings.database_url)
            transaction = dying.transaction()
            await transaction.start()
            await dying.execute("SELECT pg_advisory_xact_lock(hashtextextended('match', 0))")
            trip = await request(rider_ws, start)
            await dying.execute("SELECT 1 FROM trips WHERE id = $1::uuid FOR UPDATE", trip["id"])
            # ...and then its process is gone, mid-transaction.
            dying.terminate()
            offer = await receive_until(driver.ws, offer_of(trip))
            await cancel(rider_ws, trip)

    assert offer["data"]["distance_m"] == pytest.approx(200.0, abs=0.2)


async def test_after_a_decline_the_request_is_matched_again_never_with_the_decliner(
    matched: City,
) -> None:
    start = {"lat": 47.4979, "lng": 19.0402}
    async with (
        httpx.AsyncClient(base_url=matched.gateways[0], timeout=10) as http,
        drivers_at(http, matched, start, [100.0, 900.0]) as (near, far),
    ):
        rider = await create_account(http, "rider")
        async with await connect(matched.gateways[0], rider.access) as rider_ws:
            trip = await request(rider_ws, start)
            await receive_until(near.ws, offer_of(trip))
            await decline(near.ws, trip)
            await receive_until(near.ws, withdrawal_of(trip))
            offer = await receive_until(far.ws, offer_of(trip))
            await cancel(rider_ws, trip)

    assert offer["data"]["distance_m"] == pytest.approx(900.0, abs=0.2)


async def test_a_rider_cannot_decline_and_a_trip_not_offered_cannot_be_declined(
    answers: City,
) -> None:
    async with httpx.AsyncClient(base_url=answers.gateways[0], timeout=10) as http:
        rider = await create_account(http, "rider")
        driver = await create_account(http, "driver")
        async with (
            await connect(answers.gateways[0], rider.access) as rider_ws,
            await connect(answers.gateways[0], driver.access) as driver_ws,
        ):
            trip = await request(rider_ws, {"lat": 1.0, "lng": 1.0})
            await decline(rider_ws, trip)
            by_rider = await receive_until(rider_ws, is_error)
            await decline(driver_ws, trip)
            not_offered = await receive_until(driver_ws, is_error)
            await cancel(rider_ws, trip)

    assert by_rider["data"]["code"] == "forbidden"
    assert not_offered["data"]["code"] == "trip_unavailable"
    assert not_offered["data"]["request"] == "decline.trip"
