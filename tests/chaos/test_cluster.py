"""The system on a three-node RabbitMQ cluster: any one node killed mid-burst, and a
gateway killed mid-burst, lose nothing.

The cluster is `make cluster`'s own (tools/local_cluster.py): three private nodes
on free ports with their own epmd, cookie and data directory, joined with
`rabbitmqctl join_cluster`, removed with their data at the end of the module. The
database is the session's private Postgres. The machine's shared RabbitMQ and
Postgres are never touched.

Every process gets TAXI_AMQP_URL naming all three nodes, in an order of its own
(gateway A starts on node 1, gateway B on node 2, the workers on nodes 3, 1 and 2),
so commands and notifications cross nodes, and every node, once killed, takes
something connected to it down with it.
"""

from __future__ import annotations

import asyncio
import json
import signal
import time
import warnings
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path

import aio_pika
import asyncpg
import httpx
import orjson
import pytest

from shared.settings import Settings
from tests.chaos.probe import signed_up_then, time_until_a_trip_flows
from tests.chaos.traffic import RIDER_EVENTS, Delivery, Traffic, rider_deliveries
from tools.cleanup import unique_name
from tools.local_cluster import RABBITMQ_USER, LocalCluster
from tools.private_servers import Owner
from tools.processes import ServiceProcess, start_dispatcher, start_gateway

# Three nodes booting on a busy 2-core machine take tens of seconds; the burst with
# three kills and restarts a few minutes at most.
pytestmark = pytest.mark.timeout(600)

NODES = 3
WORKERS = 3
# The burst: 50 riders and 50 drivers, resting between trips. The gateway test's
# burst is ten trips each; the node test's lasts until every node was killed and
# booted again, however long a busy machine takes, a node killed after every
# TRIPS_PER_KILL more trips completed.
PAIRS = 50
TRIPS_PER_PAIR = 10
TRIPS = PAIRS * TRIPS_PER_PAIR
TRIPS_PER_KILL = 100
PAUSE_SECONDS = 5.0
# What the issue asks: trips flow again within this long of a node's loss.
RECOVERY_SECONDS = 10


@pytest.fixture(scope="module")
def cluster() -> Iterator[LocalCluster]:
    cluster = booted_cluster()
    try:
        yield cluster
    finally:
        cluster.remove()


def booted_cluster() -> LocalCluster:
    """Three private nodes, running (`remove` ends them). Their boot is the machine's,
    not the system's: a boot that fails (once in CI the third node was unknown to the
    cluster's epmd right after booting) is tried once more on new ports and names,
    and the first failure, with its diagnosis, is reported as a warning."""
    try:
        return LocalCluster(NODES).__enter__()
    except RuntimeError as failed:
        warnings.warn(
            f"the private cluster's boot failed; trying once more: {failed}", stacklevel=2
        )
    return LocalCluster(NODES).__enter__()


@pytest.fixture
def cluster_settings(settings: Settings, private_database: str, cluster: LocalCluster) -> Settings:
    """The run's settings on the cluster and the private Postgres, with a prefix of the
    test's own (its broker objects go with the cluster)."""
    return replace(
        settings,
        database_url=private_database,
        amqp_url=cluster.amqp_url,
        broker_prefix=unique_name("cluster").replace("_", "-"),
        log_level="INFO",
    )


def starting_at(settings: Settings, cluster: LocalCluster, node: int) -> Settings:
    """The settings with the nodes listed from `node` on, round the end."""
    urls = cluster.urls[node:] + cluster.urls[:node]
    return replace(settings, amqp_url=",".join(urls))


@asynccontextmanager
async def system_on(
    settings: Settings, cluster: LocalCluster, logs: Path
) -> AsyncIterator[tuple[list[ServiceProcess], list[str]]]:
    """Two gateways and three workers, spread over the nodes; their base URLs."""
    processes: list[ServiceProcess] = []
    try:
        urls = []
        for node in range(2):
            gateway, url = await asyncio.to_thread(
                start_gateway, starting_at(settings, cluster, node), logs
            )
            processes.append(gateway)
            urls.append(url)
        for n in range(WORKERS):
            processes.append(
                await asyncio.to_thread(
                    start_dispatcher,
                    starting_at(settings, cluster, (n + 2) % NODES),
                    logs / f"worker-{n}.log",
                )
            )
        yield processes, urls
    finally:
        for process in processes:
            process.stop()


def connections_per_node(cluster: LocalCluster) -> dict[str, int]:
    """How many client connections each running node holds."""
    return {
        node.node: int(node.ctl("eval", "length(rabbit_networking:connections_local()).").strip())
        for node in cluster.nodes
        if node.node_running
    }


async def assert_nothing_lost_or_doubled(
    traffic: Traffic, db: asyncpg.Connection, trips_per_pair: int | None = TRIPS_PER_PAIR
) -> Delivery:
    """Every trip completed with its own pair's driver and accepted once; every rider
    has every step, every client's numbered frames without a gap or a repeat. With
    `trips_per_pair` None (a burst run until stopped), every trip requested completed."""
    delivery = await rider_deliveries(traffic, wait_seconds=60)
    trips = {trip_id: pair for pair in traffic.pairs for trip_id in pair.trips.values()}
    expected = traffic.completed if trips_per_pair is None else len(traffic.pairs) * trips_per_pair
    assert len(trips) == expected
    rows = await db.fetch(
        "SELECT id::text, status, driver_id FROM trips WHERE id = ANY($1::uuid[])", list(trips)
    )
    lost = [row["id"] for row in rows if row["status"] != "COMPLETED"]
    assert len(rows) == len(trips) and lost == [], f"lost trips: {lost}"
    wrong_driver = [
        row["id"] for row in rows if row["driver_id"] != trips[row["id"]].driver.account.id
    ]
    assert wrong_driver == [], f"trips given to another driver: {wrong_driver}"
    riders = [pair.rider.account.id for pair in traffic.pairs]
    doubled = await db.fetch(
        "SELECT rider_id, pick_up_address FROM trips WHERE rider_id = ANY($1::bigint[])"
        " GROUP BY 1, 2 HAVING count(*) > 1",
        riders,
    )
    assert doubled == [], "a resent request made a second trip"
    # The log holds one acceptance per trip for its rider: never a second assignment.
    accepted = await db.fetch(
        "SELECT body FROM notifications WHERE user_id = ANY($1::bigint[])"
        " AND frame_type = 'trip.accepted'",
        riders,
    )
    per_trip = Counter(orjson.loads(row["body"])["data"]["id"] for row in accepted)
    assert {trip_id: per_trip[trip_id] for trip_id in trips} == dict.fromkeys(trips, 1)
    assert delivery.missing == [], f"{len(delivery.missing)} notifications missing"
    assert all(delivery.received[(t, e)] >= 1 for t in trips for e in RIDER_EVENTS)
    assert {e["data"]["code"] for e in delivery.errors} <= {"service_unavailable"}
    for pair in traffic.pairs:
        for client in (pair.rider, pair.driver):
            numbered = [f["seq"] for f in client.frames if "seq" in f]
            assert numbered == list(range(1, len(numbered) + 1)), "a gap or a repeat"
    return delivery


async def test_the_cluster_forms_and_a_killed_node_rejoins_with_the_quorum_queue_intact(
    cluster: LocalCluster,
) -> None:
    """The cluster on its own: three nodes of their own, each with its open-files limit,
    clustered; a quorum queue's messages survive kill -9 of any one node, which boots
    again on its data and rejoins."""
    names = {node.node for node in cluster.nodes}
    assert len(names) == NODES and all(name.endswith("@localhost") for name in names)
    assert await asyncio.to_thread(cluster.running_nodes) == names
    owner = Owner.named(RABBITMQ_USER)
    for node in cluster.nodes:
        status = Path(f"/proc/{node.pid}/status").read_text()
        if owner is not None:
            assert f"Uid:\t{owner.uid}\t" in status, "a node runs as root"
        limits = Path(f"/proc/{node.pid}/limits").read_text()
        open_files = next(line for line in limits.splitlines() if "open files" in line)
        assert int(open_files.split()[3]) >= min(node.open_files, 20_000), open_files
    queue_name = f"cluster-check-{unique_name('q')}"
    messages = 100
    connection = await aio_pika.connect(cluster.urls[0])
    async with connection:
        channel = await connection.channel(publisher_confirms=True)
        queue = await channel.declare_queue(
            queue_name, durable=True, arguments={"x-queue-type": "quorum"}
        )
        for n in range(messages):
            await channel.default_exchange.publish(
                aio_pika.Message(str(n).encode(), delivery_mode=aio_pika.DeliveryMode.PERSISTENT),
                queue_name,
            )
    members = json.loads(
        await asyncio.to_thread(
            cluster.nodes[0].ctl, "list_queues", "name", "members", "--formatter", "json"
        )
    )
    assert sorted(next(q["members"] for q in members if q["name"] == queue_name)) == sorted(names)
    try:
        for index in range(NODES):
            started = time.monotonic()
            await asyncio.to_thread(cluster.kill, index)
            survivor = cluster.nodes[(index + 1) % NODES]
            assert await asyncio.to_thread(cluster.running_nodes) == names - {
                cluster.nodes[index].node
            }
            connection = await aio_pika.connect(survivor.url)
            async with connection:
                channel = await connection.channel()
                queue = await channel.declare_queue(queue_name, passive=True)
                for _ in range(30):  # a new leader is elected within a few seconds
                    if queue.declaration_result.message_count == messages:
                        break
                    await asyncio.sleep(0.5)
                    queue = await channel.declare_queue(queue_name, passive=True)
                assert queue.declaration_result.message_count == messages
            await asyncio.to_thread(cluster.restart, index)
            took = time.monotonic() - started
            print(f"\nnode {index + 1} killed, and back in the cluster after {took:.1f}s")
    finally:
        connection = await aio_pika.connect(cluster.urls[0])
        async with connection:
            channel = await connection.channel()
            await channel.queue_delete(queue_name)


async def until_completed_or_failed(
    traffic: Traffic, burst: asyncio.Task[None], count: int
) -> None:
    """Until `count` trips completed; a burst that failed meanwhile fails the test with
    its own error."""
    progress = asyncio.create_task(traffic.wait_until_completed(count))
    try:
        await asyncio.wait({progress, burst}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        progress.cancel()
    if burst.done():
        await burst  # its error
        raise AssertionError("the burst ended before it was stopped")


# Booting a killed node back into the cluster takes about 20 s on a quiet 2-core machine
# and over two minutes with both cores busy; the burst goes on through three of them.
@pytest.mark.timeout(1500)
async def test_each_node_killed_in_turn_mid_burst_loses_no_trip_and_no_notification(
    cluster: LocalCluster, cluster_settings: Settings, tmp_path: Path
) -> None:
    """Trips go on, riders and drivers spread over both gateways; after every
    TRIPS_PER_KILL trips completed, one node after the other is killed with SIGKILL
    and, once a trip flows again, booted back into the cluster; the burst goes on
    until the last one is back and TRIPS_PER_KILL more trips completed. The gateways and workers
    that were on it move to another node (TAXI_AMQP_URL lists all three): a trip
    requested on one gateway is offered and accepted on the other within
    RECOVERY_SECONDS of each kill, and at the end no trip is lost, none was given
    twice and no client misses or repeats a notification."""
    async with system_on(cluster_settings, cluster, tmp_path) as (processes, (url_a, url_b)):
        async with httpx.AsyncClient(base_url=url_a, timeout=10) as http:
            traffic = await Traffic.open(http, [url_a, url_b], PAIRS, spread=True)
            new_pair = signed_up_then(http)
            recoveries: list[float] = []
            slow: list[str] = []
            stop = asyncio.Event()
            burst = asyncio.create_task(traffic.run_until(stop, PAUSE_SECONDS))
            try:
                baseline = await time_until_a_trip_flows(new_pair, url_a, url_b, "baseline")
                for index in range(NODES):
                    await until_completed_or_failed(traffic, burst, TRIPS_PER_KILL * (index + 1))
                    held = await asyncio.to_thread(connections_per_node, cluster)
                    await asyncio.to_thread(cluster.kill, index)
                    killed_at = time.monotonic()
                    met: list[str] = []
                    recovery = await time_until_a_trip_flows(
                        new_pair, url_a, url_b, f"probe {index}", step_seconds=5, met=met
                    )
                    recoveries.append(recovery)
                    if recovery >= RECOVERY_SECONDS:
                        slow.append(slow_recovery(index, met, processes, cluster))
                    print(
                        f"\nnode {index + 1} killed at {traffic.completed} trips, holding"
                        f" {held.get(cluster.nodes[index].node, 0)} of {sum(held.values())}"
                        f" connections: a trip flowed again after {recovery:.2f}s"
                    )
                    await asyncio.to_thread(cluster.restart, index)
                    print(f"node {index + 1} back in {time.monotonic() - killed_at:.1f}s")
                await until_completed_or_failed(traffic, burst, TRIPS_PER_KILL * (NODES + 1))
                stop.set()
                await burst
                db = await asyncpg.connect(cluster_settings.database_url)
                try:
                    delivery = await assert_nothing_lost_or_doubled(traffic, db, None)
                finally:
                    await db.close()
            finally:
                burst.cancel()
                await traffic.close()
        assert all(process.poll() is None for process in processes)
    print(
        f"{traffic.completed} trips, 3 nodes killed: a probe trip took {baseline:.2f}s before,"
        f" after each kill {', '.join(f'{r:.2f}s' for r in recoveries)};"
        f" resends={traffic.resends} duplicates={delivery.duplicates}"
        f" errors={len(delivery.errors)}"
    )
    assert max(recoveries) < RECOVERY_SECONDS, (
        f"trips flowed again only after {recoveries}:\n" + "\n".join(slow)
    )


def slow_recovery(
    index: int, met: list[str], processes: list[ServiceProcess], cluster: LocalCluster
) -> str:
    """What a recovery slower than allowed leaves to go on, read as soon as a trip flows
    again: what each attempt met, what the gateways and workers said of the broker, and
    the nodes' own logs."""
    said = []
    for process in processes:
        lines = [line for line in process.log().splitlines() if "broker" in line.lower()]
        said.append(f"-- {process.log_path.name}:\n" + "\n".join(lines[-12:]))
    return "\n".join(
        [
            f"after the kill of node {index + 1}, attempts met: {met}",
            *said,
            cluster.diagnosis(tail_lines=40),
        ]
    )


async def test_clients_of_a_gateway_killed_mid_burst_resume_on_the_other_with_since(
    cluster: LocalCluster, cluster_settings: Settings, tmp_path: Path
) -> None:
    """Half the riders and half the drivers start on gateway A, the others on B, the
    gateways on different nodes. A is killed with SIGKILL a quarter of the way
    through the burst: its clients reconnect to B with `since` and resume there with
    nothing missing or repeated, and every trip completes."""
    pairs, trips_per_pair = 20, 5
    async with system_on(cluster_settings, cluster, tmp_path) as (processes, (url_a, url_b)):
        doomed = processes[0]
        async with httpx.AsyncClient(base_url=url_b, timeout=10) as http:
            traffic = await Traffic.open(http, [url_a, url_b], pairs, spread=True)
            burst = asyncio.create_task(traffic.run(trips_per_pair))
            try:
                await traffic.wait_until_completed(pairs * trips_per_pair // 4)
                doomed.signal(signal.SIGKILL)
                assert await asyncio.to_thread(doomed.wait, 10) == -signal.SIGKILL
                await burst
                db = await asyncpg.connect(cluster_settings.database_url)
                try:
                    delivery = await assert_nothing_lost_or_doubled(traffic, db, trips_per_pair)
                finally:
                    await db.close()
            finally:
                burst.cancel()
                await traffic.close()
    moved = [
        client
        for pair in traffic.pairs
        for client in (pair.rider, pair.driver)
        if client.connected_to[0] == url_a
    ]
    assert len(moved) == pairs  # half the riders and half the drivers started on A
    for client in moved:
        assert client.connected_to[-1] == url_b and client.reconnects >= 1
    print(
        f"\n{len(moved)} clients moved to the other gateway; resends={traffic.resends}"
        f" duplicates={delivery.duplicates}"
    )
