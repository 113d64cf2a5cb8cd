"""A dispatcher killed with SIGKILL in the middle of a burst loses nothing and doubles nothing."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import asyncpg
import httpx

from shared.settings import Settings
from shared.topology import Topology
from tests.chaos.traffic import RIDER_EVENTS, Traffic, rider_deliveries
from tools.processes import start_dispatcher, start_gateway

PAIRS = 20
TRIPS_PER_PAIR = 10  # 200 trips, 800 commands


async def outbox_rows(db: asyncpg.Connection, exchange: str, within: float = 60) -> int:
    """Rows of this exchange still in the outbox once the relays had their chance (they
    leave a row alone for its first RELAY_GRACE_SECONDS, then take it within a second)."""
    deadline = asyncio.get_running_loop().time() + within
    while True:
        count = int(await db.fetchval("SELECT count(*) FROM outbox WHERE exchange = $1", exchange))
        if count == 0 or asyncio.get_running_loop().time() > deadline:
            return count
        await asyncio.sleep(0.1)


async def test_killing_a_worker_mid_burst_loses_no_trip_and_no_notification(
    isolated_settings: Settings, tmp_path: Path, db: asyncpg.Connection
) -> None:
    gateway, base_url = start_gateway(isolated_settings, tmp_path)
    workers = [
        start_dispatcher(isolated_settings, tmp_path / f"worker-{n}.log", "--prefetch", "64")
        for n in range(2)
    ]
    try:
        async with httpx.AsyncClient(base_url=base_url, timeout=10) as http:
            traffic = await Traffic.open(http, base_url, PAIRS)
            try:
                burst = asyncio.create_task(traffic.run(TRIPS_PER_PAIR))
                await traffic.wait_until_completed(PAIRS * TRIPS_PER_PAIR // 4)
                workers[0].signal(signal.SIGKILL)
                assert workers[0].wait(10) == -signal.SIGKILL
                workers.append(start_dispatcher(isolated_settings, tmp_path / "worker-2.log"))
                await burst
                delivery = await rider_deliveries(traffic)
                # While the workers still run: their relays publish what the killed one left.
                exchange = Topology(isolated_settings.broker_prefix).notifications_exchange
                unpublished = await outbox_rows(db, exchange)
            finally:
                await traffic.close()
    finally:
        for process in [*workers[1:], gateway]:
            process.stop()

    trip_ids = [trip_id for pair in traffic.pairs for trip_id in pair.trips.values()]
    assert len(trip_ids) == PAIRS * TRIPS_PER_PAIR
    rows = await db.fetch(
        "SELECT t.id, t.status, t.driver_id, t.rider_id FROM trips t WHERE t.id = ANY($1::uuid[])",
        trip_ids,
    )
    assert len(rows) == len(trip_ids), "a trip was lost"
    assert {row["status"] for row in rows} == {"COMPLETED"}
    drivers = {pair.rider.account.id: pair.driver.account.id for pair in traffic.pairs}
    assert all(row["driver_id"] == drivers[row["rider_id"]] for row in rows)
    # No second trip for any request: each pair's rider has exactly its trips.
    per_rider = await db.fetch(
        "SELECT rider_id, count(*) AS n FROM trips WHERE rider_id = ANY($1::bigint[]) GROUP BY 1",
        list(drivers),
    )
    assert {row["n"] for row in per_rider} == {TRIPS_PER_PAIR}
    assert delivery.missing == [], f"riders missed {len(delivery.missing)} notifications"
    assert all(delivery.received[(t, e)] >= 1 for t in trip_ids for e in RIDER_EVENTS)
    assert unpublished == 0, "notifications were left unpublished"
    print(
        f"\n200 trips, worker killed at 25%: duplicates={delivery.duplicates} "
        f"resends={traffic.resends} errors={len(delivery.errors)}"
    )
