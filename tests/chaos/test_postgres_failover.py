"""The database primary killed mid-burst: Patroni promotes the synchronous standby and
nothing a client saw is lost.

The Postgres is `make cluster`'s own (tools/local_postgres.py): Patroni on a private
etcd, a primary and a synchronous standby of private servers on free ports, removed
with their data at the end of the module however the test ends. Every process gets
both servers in TAXI_DATABASE_URL (`target_session_attrs=read-write`). The broker is
the run's, under a prefix of the test's own; the machine's shared Postgres is never
touched.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import replace
from functools import partial
from pathlib import Path

import asyncpg
import httpx
import orjson
import pytest

from shared.migrate import migrate
from shared.settings import Settings
from tests.chaos.probe import signed_up_before, time_until_a_trip_flows
from tests.chaos.test_cluster import assert_nothing_lost_or_doubled
from tests.chaos.traffic import Traffic
from tests.clients import create_account
from tools.cleanup import delete_broker_objects, unique_name
from tools.local_postgres import PostgresCluster, missing_packages
from tools.private_servers import wait_until
from tools.processes import ServiceProcess, metrics_url, start_dispatcher, start_gateway

pytestmark = pytest.mark.timeout(900)

WORKERS = 3
PAIRS = 30
PAUSE_SECONDS = 2.0
# The burst: this many trips before the kill, and as many after trips flowed again.
TRIPS_AROUND_THE_KILL = 60
# Riders and drivers signed up before the kill for the probe trips: signing up needs
# the database, which is what is away.
PROBE_PAIRS = 150
# However long a failover takes on a busy machine, a probe trip flows within this long.
PROBE_SECONDS = 300


@pytest.fixture(scope="module")
def postgres_cluster() -> Iterator[PostgresCluster]:
    missing = missing_packages()
    if missing:
        pytest.fail(f"the failover test needs {', '.join(missing)} (make patroni installs them)")
    cluster = PostgresCluster()
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.remove()


@pytest.fixture
def failover_settings(settings: Settings, postgres_cluster: PostgresCluster) -> Iterator[Settings]:
    database_url = postgres_cluster.url(unique_name("failover"))
    migrate(database_url)
    own = replace(
        settings,
        database_url=database_url,
        broker_prefix=unique_name("failover").replace("_", "-"),
        log_level="INFO",
    )
    yield own
    # The shared broker keeps what the test's prefix named: remove it, however it ended.
    asyncio.run(delete_broker_objects(own))


@asynccontextmanager
async def system(
    settings: Settings, logs: Path
) -> AsyncIterator[tuple[list[ServiceProcess], list[str]]]:
    """Two gateways and three workers; the gateways' base URLs."""
    processes: list[ServiceProcess] = []
    try:
        urls = []
        for _ in range(2):
            gateway, url = await asyncio.to_thread(start_gateway, settings, logs)
            processes.append(gateway)
            urls.append(url)
        for n in range(WORKERS):
            processes.append(
                await asyncio.to_thread(start_dispatcher, settings, logs / f"worker-{n}.log")
            )
        yield processes, urls
    finally:
        for process in processes:
            process.stop()


async def completed_or_failed(traffic: Traffic, burst: asyncio.Task[None], count: int) -> None:
    """Until `count` trips completed; a burst that failed meanwhile fails the test."""
    progress = asyncio.create_task(traffic.wait_until_completed(count))
    try:
        await asyncio.wait({progress, burst}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        progress.cancel()
    if burst.done():
        await burst
        raise AssertionError("the burst ended before it was stopped")


def metric(text: str, name: str) -> float:
    found = re.search(rf"^{name} ([0-9.e+]+)$", text, re.MULTILINE)
    return float(found.group(1)) if found else -1.0


def reports_the_failover(gateway: ServiceProcess) -> bool:
    """The gateway's database watch saw the server change and is on a primary again."""
    try:
        text = httpx.get(metrics_url(gateway), timeout=2).text
    except httpx.TransportError:
        return False
    return (
        metric(text, "taxi_database_failovers_total") >= 1
        and metric(text, "taxi_database_primary") == 1
    )


async def assert_every_numbered_frame_is_in_the_log(
    traffic: Traffic, db: asyncpg.Connection
) -> None:
    """Every numbered frame any client received (so every acceptance or refusal a client
    saw) is in the notification log on the promoted primary, as it was sent."""
    for pair in traffic.pairs:
        for client in (pair.rider, pair.driver):
            seen = {f["seq"]: f for f in client.frames if "seq" in f}
            rows = await db.fetch(
                "SELECT seq, body FROM notifications WHERE user_id = $1",
                client.account.id,
            )
            logged = {row["seq"]: orjson.loads(row["body"]) for row in rows}
            missing = sorted(set(seen) - set(logged))
            assert missing == [], f"user {client.account.id}: frames {missing} not in the log"
            changed = [s for s, f in seen.items() if logged[s].get("event_id") != f.get("event_id")]
            assert changed == [], f"user {client.account.id}: frames {changed} differ"


async def test_the_primary_killed_mid_burst_is_failed_over_losing_nothing(
    postgres_cluster: PostgresCluster, failover_settings: Settings, tmp_path: Path
) -> None:
    """Trips go on over two gateways and three workers; after TRIPS_AROUND_THE_KILL trips
    the primary's Postgres is killed with SIGKILL (postmaster and backends). Patroni
    promotes the synchronous standby, every process's pool reopens on it (the URL names
    both), in-flight commands are retried; the burst goes on until a probe trip flowed
    and TRIPS_AROUND_THE_KILL more trips completed, and the old primary is back as the
    new one's synchronous standby. No trip is lost or doubled, and every numbered frame a
    client saw is in the log."""
    pg = postgres_cluster
    async with system(failover_settings, tmp_path) as (processes, (url_a, url_b)):
        async with httpx.AsyncClient(base_url=url_a, timeout=10) as http:
            traffic = await Traffic.open(http, [url_a, url_b], PAIRS, spread=True)
            probes = signed_up_before(
                [
                    (await create_account(http, "rider"), await create_account(http, "driver"))
                    for _ in range(PROBE_PAIRS)
                ]
            )
            stop = asyncio.Event()
            burst = asyncio.create_task(traffic.run_until(stop, PAUSE_SECONDS))
            try:
                baseline = await time_until_a_trip_flows(
                    probes, url_a, url_b, "baseline", within=PROBE_SECONDS
                )
                await completed_or_failed(traffic, burst, TRIPS_AROUND_THE_KILL)
                killed_at_trips = traffic.completed
                old = await asyncio.to_thread(pg.kill_primary)
                killed_at = time.monotonic()
                recovery = await time_until_a_trip_flows(
                    probes, url_a, url_b, "after the kill", within=PROBE_SECONDS
                )
                await completed_or_failed(traffic, burst, traffic.completed + TRIPS_AROUND_THE_KILL)
                new = pg.primary()
                assert new is not None and new != old, "the standby was not promoted"
                await asyncio.to_thread(
                    wait_until, partial(pg.standby_of, new), "the old primary back as a standby"
                )
                rejoined = time.monotonic() - killed_at
                gateways = [p for p in processes if p.module == "gateway"]
                for gateway in gateways:
                    await asyncio.to_thread(
                        wait_until,
                        partial(reports_the_failover, gateway),
                        "taxi_database_failovers_total >= 1 on a gateway",
                    )
                stop.set()
                await burst
                db = await asyncpg.connect(failover_settings.database_url)
                try:
                    delivery = await assert_nothing_lost_or_doubled(traffic, db, None)
                    await assert_every_numbered_frame_is_in_the_log(traffic, db)
                finally:
                    await db.close()
            finally:
                burst.cancel()
                await traffic.close()
        assert all(process.poll() is None for process in processes)
    print(
        f"\n{traffic.completed} trips; primary (node {old + 1}) killed at {killed_at_trips}:"
        f" a probe trip took {baseline:.2f}s before, flowed again {recovery:.2f}s after the"
        f" kill; old primary a synchronous standby again after {rejoined:.1f}s;"
        f" resends={traffic.resends} duplicates={delivery.duplicates}"
        f" errors={len(delivery.errors)}"
    )
