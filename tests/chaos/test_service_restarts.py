"""The broker and the database restart in the middle of a burst; nothing is lost or doubled.

The gateway and workers here run on the session's private Postgres and RabbitMQ
(`private_settings`), and only those are stopped: never the machine's shared ones.
"""

from __future__ import annotations

import asyncio
import itertools
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractContextManager, asynccontextmanager
from functools import partial
from pathlib import Path

import asyncpg
import httpx
import pytest
import websockets
from websockets.asyncio.client import ClientConnection

from gateway.tokens import TokenService
from shared.settings import Settings
from shared.users import USER_COLUMNS, User, user_from_row
from tests.chaos.services import (
    PrivatePostgres,
    PrivateRabbitMQ,
    postgres_stopped,
    rabbitmq_stopped,
)
from tests.chaos.traffic import RIDER_EVENTS, Traffic, rider_deliveries
from tests.clients import about, connect, create_account, receive, receive_until, send
from tools.processes import ServiceProcess, start_dispatcher, start_gateway

# The first test to ask for a private server waits for its start, on a slow machine
# tens of seconds (pytest-timeout counts fixture set-up).
pytestmark = pytest.mark.timeout(300)

PAIRS = 10
TRIPS_PER_PAIR = 6
# How long the service stays away: long enough for commands to pile up against it.
OUTAGE_SECONDS = 3


def start_system(settings: Settings, logs: Path) -> tuple[list[ServiceProcess], str]:
    gateway, base_url = start_gateway(settings, logs)
    workers = [start_dispatcher(settings, logs / f"worker-{n}.log") for n in range(2)]
    return [gateway, *workers], base_url


async def assert_all_trips_completed_and_notified(traffic: Traffic, db: asyncpg.Connection) -> None:
    delivery = await rider_deliveries(traffic, wait_seconds=60)
    trip_ids = [trip_id for pair in traffic.pairs for trip_id in pair.trips.values()]
    assert len(trip_ids) == PAIRS * TRIPS_PER_PAIR
    rows = await db.fetch(
        "SELECT status, driver_id FROM trips WHERE id = ANY($1::uuid[])", trip_ids
    )
    assert [row["status"] for row in rows] == ["COMPLETED"] * len(trip_ids)
    assert delivery.missing == []
    assert all(delivery.received[(t, e)] >= 1 for t in trip_ids for e in RIDER_EVENTS)
    # Refusals are only ever "try again": never a trip given twice or a wrong state.
    # A resent step has no second effect, not even a refusal (tests/chaos/traffic.py).
    assert {e["data"]["code"] for e in delivery.errors} <= {"service_unavailable"}
    riders = [pair.rider.account.id for pair in traffic.pairs]
    doubled = await db.fetch(
        "SELECT rider_id, pick_up_address FROM trips WHERE rider_id = ANY($1::bigint[])"
        " GROUP BY 1, 2 HAVING count(*) > 1",
        riders,
    )
    assert doubled == [], "a resent request made a second trip"
    print(
        f"\n{len(trip_ids)} trips: duplicates={delivery.duplicates} resends={traffic.resends}"
        f" errors={len(delivery.errors)}"
    )


async def time_until_a_trip_flows(base_url: str, http: httpx.AsyncClient) -> float:
    """Seconds from now until a fresh rider's request reaches a fresh driver as an offer."""
    started = time.monotonic()
    rider = await create_account(http, "rider")
    driver = await create_account(http, "driver")
    for attempt in itertools.count():
        try:
            async with (
                await connect(base_url, rider.access) as rider_ws,
                await connect(base_url, driver.access) as driver_ws,
            ):
                # One request id per attempt: a resend never makes a second trip.
                await send(
                    rider_ws,
                    {
                        "type": "create.trip",
                        "request_id": f"recovery-probe-{attempt}",
                        "data": {"pick_up_address": "X", "drop_off_address": "Y"},
                    },
                )
                first = await receive_until(
                    rider_ws, lambda f: f["type"] in ("trip.requested", "error")
                )
                if first["type"] != "trip.requested":
                    continue
                trip_id = first["data"]["id"]
                try:
                    await receive_until(driver_ws, about(trip_id, "trip.requested"), 5)
                except TimeoutError:
                    # Not flowing yet: the offer went out before this gateway was bound
                    # again. End the request and try once more.
                    cancel = {"type": "update.trip", "data": {"id": trip_id, "status": "CANCELLED"}}
                    await send(rider_ws, cancel)
                    await receive_until(rider_ws, about(trip_id, "trip.cancelled"))
                    continue
                return time.monotonic() - started
        except websockets.InvalidStatus as refused:
            # The gateway refuses sockets (503) until its broker connection is back.
            assert refused.response.status_code == 503, refused
            await asyncio.sleep(0.1)  # a client's retry pace


@asynccontextmanager
async def burst_through(
    outage: Callable[[], AbstractContextManager[None]], base_url: str
) -> AsyncIterator[tuple[Traffic, httpx.AsyncClient, asyncio.Task[None]]]:
    """A burst of trips under way, a quarter done when the outage starts; yields once
    the service is back, with the burst still running."""
    async with httpx.AsyncClient(base_url=base_url, timeout=10) as http:
        traffic = await Traffic.open(http, base_url, PAIRS)
        try:
            burst = asyncio.create_task(traffic.run(TRIPS_PER_PAIR))
            await traffic.wait_until_completed(PAIRS * TRIPS_PER_PAIR // 4)
            with outage():
                await asyncio.sleep(OUTAGE_SECONDS)  # the outage itself, not a sync
            yield traffic, http, burst
        finally:
            await traffic.close()


KNOWN_USERS = 50_000
CONNECTED_USERS = 1_000


async def add_known_users(database_url: str, count: int) -> list[User]:
    """Users who signed up once: the broker must hold nothing for them while away."""
    batch = uuid.uuid4().hex[:8]
    db = await asyncpg.connect(database_url)
    try:
        rows = await db.fetch(
            f"""
            INSERT INTO users (username, password_hash, user_group)
            SELECT 'known-{batch}-' || n || '@example.com', 'not a hash',
                   CASE WHEN n % 2 = 0 THEN 'rider' ELSE 'driver' END
            FROM generate_series(1, $1) AS n
            RETURNING {USER_COLUMNS}
            """,
            count,
        )
    finally:
        await db.close()
    return [user_from_row(row) for row in rows]


@asynccontextmanager
async def connected(
    base_url: str, settings: Settings, users: list[User]
) -> AsyncIterator[list[ClientConnection]]:
    tokens = TokenService(settings.jwt_secret, access_seconds=3600, refresh_seconds=3600)
    sockets: list[ClientConnection] = []
    try:
        for user in users:
            sockets.append(await connect(base_url, tokens.issue(user, "access")))
        yield sockets
    finally:
        for ws in sockets:
            await ws.close()


async def test_broker_restart_mid_burst_with_50000_known_users_and_1000_connected(
    private_settings: Settings, private_rabbitmq: PrivateRabbitMQ, tmp_path: Path
) -> None:
    processes, base_url = start_system(private_settings, tmp_path)
    try:
        known = await add_known_users(private_settings.database_url, KNOWN_USERS)
        outage = partial(rabbitmq_stopped, private_rabbitmq)
        async with (
            connected(base_url, private_settings, known[:CONNECTED_USERS]) as idle,
            burst_through(outage, base_url) as (traffic, http, burst),
        ):
            recovery = await time_until_a_trip_flows(base_url, http)
            # The idle sockets stayed up through the outage, and are still served.
            await send(idle[-1], {"type": "echo.message", "data": "still here"})
            assert (await receive(idle[-1]))["data"] == "still here"
            await burst
            db = await asyncpg.connect(private_settings.database_url)
            try:
                await assert_all_trips_completed_and_notified(traffic, db)
            finally:
                await db.close()
        assert recovery < 10, f"trips flowed again only after {recovery:.1f}s"
        print(
            f"trips flowed again {recovery:.2f}s after the broker was back, with"
            f" {KNOWN_USERS} known users and {CONNECTED_USERS} connected"
        )
        assert all(process.poll() is None for process in processes)
    finally:
        for process in processes:
            process.stop()


async def test_database_restart_mid_burst(
    private_settings: Settings, private_postgres: PrivatePostgres, tmp_path: Path
) -> None:
    processes, base_url = start_system(private_settings, tmp_path)
    try:
        outage = partial(postgres_stopped, private_postgres)
        async with burst_through(outage, base_url) as (traffic, _, burst):
            await burst
            db = await asyncpg.connect(private_settings.database_url)
            try:
                await assert_all_trips_completed_and_notified(traffic, db)
            finally:
                await db.close()
        assert all(process.poll() is None for process in processes)
        worker_logs = "".join(process.log() for process in processes[1:])
        assert "database unavailable, will retry" in worker_logs
    finally:
        for process in processes:
            process.stop()
