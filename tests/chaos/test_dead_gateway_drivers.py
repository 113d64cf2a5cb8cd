"""A gateway killed under its drivers: within TAXI_GATEWAY_SILENT_SECONDS no worker
offers a trip to them any more, and the nearest live driver gets ring 1."""

from __future__ import annotations

import asyncio
import contextlib
import math
import signal
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed

from gateway.live.locations import HEARTBEAT_SECONDS
from shared.locations import EARTH_RADIUS_M
from shared.settings import Settings
from tests.clients import about, connect, create_account, receive_until, send
from tools.processes import ServiceProcess, start_dispatcher, start_gateway

METRES_PER_DEGREE_OF_LATITUDE = EARTH_RADIUS_M * math.pi / 180
CENTRE = {"lat": 59.3293, "lng": 18.0686}  # a city no other test uses
# Eight drivers near the pick-up on gateway A (a full ring), one live driver farther
# away on gateway B; rings widen late, so the first ring is the whole story.
DEAD_METRES = [100.0 * n for n in range(1, 9)]
LIVE_METRES = 1100.0
ADDRESSES = {"pick_up_address": "Centralplan 15", "drop_off_address": "Slottet"}


def north_of(metres: float) -> dict[str, float]:
    return {"lat": CENTRE["lat"] + metres / METRES_PER_DEGREE_OF_LATITUDE, "lng": CENTRE["lng"]}


async def keep_reporting(ws: ClientConnection, point: dict[str, float]) -> None:
    """A driver's app: its location every second, until its socket is gone."""
    with contextlib.suppress(ConnectionClosed):
        while True:
            await send(ws, {"type": "update.location", "data": point})
            await asyncio.sleep(1.0)


async def request(rider_ws: ClientConnection, pick_up: dict[str, float]) -> dict[str, Any]:
    await send(rider_ws, {"type": "create.trip", "data": {**ADDRESSES, "pick_up": pick_up}})
    frame = await receive_until(rider_ws, lambda f: f["type"] in ("trip.requested", "error"))
    assert frame["type"] == "trip.requested", frame
    return dict(frame["data"])


async def cancel(rider_ws: ClientConnection, trip: dict[str, Any]) -> None:
    await send(rider_ws, {"type": "update.trip", "data": {"id": trip["id"], "status": "CANCELLED"}})
    await receive_until(rider_ws, about(trip["id"], "trip.cancelled"))


async def first_ring(db: asyncpg.Connection, trip: dict[str, Any]) -> set[int]:
    """Whom the trip's first ring named (recorded in the transaction that created it)."""
    rows = await db.fetch(
        "SELECT driver_id FROM trip_offers WHERE trip_id = $1::uuid AND ring = 1", trip["id"]
    )
    return {row["driver_id"] for row in rows}


async def test_the_drivers_of_a_killed_gateway_get_no_offers_and_the_live_one_gets_ring_1(
    isolated_settings: Settings, tmp_path: Path
) -> None:
    settings = replace(
        isolated_settings,
        dispatch_radius_meters=3000,
        dispatch_max_offers=len(DEAD_METRES),
        dispatch_widen_seconds=60,
        location_stale_seconds=30,
    )
    gateway_a, url_a = start_gateway(settings, tmp_path)
    gateway_b, url_b = start_gateway(settings, tmp_path)
    processes: list[ServiceProcess] = [gateway_a, gateway_b]
    reporting: list[asyncio.Task[None]] = []
    try:
        processes += [start_dispatcher(settings, tmp_path / f"worker-{n}.log") for n in range(2)]
        db = await asyncpg.connect(settings.database_url)
        async with httpx.AsyncClient(base_url=url_b, timeout=10) as http:
            dead = [await create_account(http, "driver") for _ in DEAD_METRES]
            live = await create_account(http, "driver")
            rider = await create_account(http, "rider")
            dead_ws = [await connect(url_a, d.access) for d in dead]
            live_ws = await connect(url_b, live.access)
            rider_ws = await connect(url_b, rider.access)
            for ws, metres in zip(dead_ws, DEAD_METRES, strict=True):
                reporting.append(asyncio.create_task(keep_reporting(ws, north_of(metres))))
            reporting.append(asyncio.create_task(keep_reporting(live_ws, north_of(LIVE_METRES))))
            dead_ids = {d.id for d in dead}

            # Until dispatch knows all of them: a trip at the pick-up names A's eight,
            # one where the live driver is names them (and B's gateway is heard).
            while True:
                trip = await request(rider_ws, CENTRE)
                ring = await first_ring(db, trip)
                await cancel(rider_ws, trip)
                if ring == dead_ids:
                    break
            while True:
                trip = await request(rider_ws, north_of(LIVE_METRES))
                ring = await first_ring(db, trip)
                await cancel(rider_ws, trip)
                if live.id in ring:
                    break

            gateway_a.signal(signal.SIGKILL)
            gateway_a.wait(10)
            killed_at = time.monotonic()
            # The contract: silent this long, give or take a heartbeat and the time a
            # batch takes to reach a worker and a request to be handled.
            deadline = killed_at + settings.gateway_silent_seconds + 2 * HEARTBEAT_SECONDS + 2

            # Requests until one's first ring leaves A's drivers out (each one is an
            # observable answer, not a guess at a delay).
            rings = []
            while True:
                trip = await request(rider_ws, CENTRE)
                ring = await first_ring(db, trip)
                rings.append(ring)
                if ring == {live.id}:
                    break
                await cancel(rider_ws, trip)
                # Pacing, not waiting for anything: a worker's view of the gateways
                # changes only when a batch arrives, about once a heartbeat.
                await asyncio.sleep(HEARTBEAT_SECONDS / 4)
                assert time.monotonic() < deadline, (
                    f"{len(rings)} requests after the kill, the last at "
                    f"{time.monotonic() - killed_at:.1f} s, still offered to A's drivers: "
                    f"{sorted(ring & dead_ids)}"
                )
            offer = await receive_until(live_ws, about(trip["id"], "trip.requested"))
            assert offer["data"]["distance_m"] == pytest.approx(LIVE_METRES, abs=0.5)
            await cancel(rider_ws, trip)
            # From then on, whichever worker takes a request, it knows A is gone.
            for _ in range(4):
                trip = await request(rider_ws, CENTRE)
                assert await first_ring(db, trip) == {live.id}
                await cancel(rider_ws, trip)

            for ws in [live_ws, rider_ws, *dead_ws]:
                await ws.close()
        await db.close()
    finally:
        for task in reporting:
            task.cancel()
        await asyncio.gather(*reporting, return_exceptions=True)
        for process in processes:
            process.stop()
