"""`make cluster` as an operator uses it: three private RabbitMQ nodes clustered and a
Postgres primary with a synchronous standby under Patroni, two gateways and three
workers on them, a trip across the gateways, and Ctrl-C or `make cluster-stop`
stopping it all and removing the nodes' and the Postgres servers' data; a taken port
named in one line before anything starts.

The nodes and the Postgres servers are private (their own names, ports and data
directories; Patroni's etcd is private too): the machine's shared services are not
touched. The database's name is the test's own.
"""

from __future__ import annotations

import asyncio
import os
import random
import re
import socket
import subprocess
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from pathlib import Path

import httpx
import pytest

from shared.migrate import drop_database
from shared.settings import Settings
from tests.chaos.services import PrivatePostgres
from tests.clients import about, connect, create_account, receive_until, send
from tests.ops.terminal import InTerminal, start_in_terminal
from tools.cleanup import unique_name
from tools.local_cluster import (
    CTL_PORT_OFFSET,
    CTL_PORT_RANGE,
    DIST_PORT_OFFSET,
    LocalCluster,
    default_dir,
)
from tools.local_postgres import cluster_dir
from tools.preflight import port_taken
from tools.private_servers import process_alive
from tools.processes import free_port, free_port_run

pytestmark = pytest.mark.timeout(600)

NODES = 3
WORKERS = 3
# Installing, building the client and booting three nodes on a busy machine.
START_SECONDS = 300
# Every process and node gone after a Ctrl-C within this (three nodes stop cleanly).
STOP_SECONDS = 60
ROOT = Path(__file__).resolve().parents[2]


def cluster_ports() -> tuple[int, int]:
    """A first AMQP port p with p .. p+2, their distribution ports (+20000) and the
    CLI's (+30000) free, and a free epmd port: the ports `make cluster` derives."""
    while True:
        base = random.randrange(10_000, 35_000 - CTL_PORT_RANGE)
        wanted = [base + n + offset for n in range(NODES) for offset in (0, DIST_PORT_OFFSET)]
        wanted += [base + CTL_PORT_OFFSET + n for n in range(CTL_PORT_RANGE)]
        if not any(port_taken("127.0.0.1", port) for port in wanted):
            return base, free_port()


@dataclass
class MakeCluster:
    terminal: InTerminal
    settings: Settings
    amqp_port: int
    epmd_port: int
    log: Path

    @property
    def process(self) -> subprocess.Popen[bytes]:
        return self.terminal.process

    @property
    def gateways(self) -> list[str]:
        return [f"http://127.0.0.1:{self.settings.port + n}" for n in range(2)]

    @property
    def data_dir(self) -> Path:
        return default_dir(self.amqp_port)

    @property
    def make_args(self) -> list[str]:
        return [
            f"CLUSTER_WORKERS={WORKERS}",
            f"CLUSTER_AMQP_PORT={self.amqp_port}",
            f"CLUSTER_EPMD_PORT={self.epmd_port}",
        ]

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def serving_urls(self) -> list[str]:
        """Both gateways' readiness and metrics, and each worker's readiness."""
        metrics = self.settings.metrics_port
        return [
            *(f"{url}/readyz" for url in self.gateways),
            f"http://127.0.0.1:{metrics}/metrics",
            f"http://127.0.0.1:{metrics + WORKERS + 1}/metrics",
            *(f"http://127.0.0.1:{metrics + n}/readyz" for n in range(1, WORKERS + 1)),
        ]


def make(target: str, settings: Settings, log: Path, *args: str) -> subprocess.Popen[bytes]:
    with log.open("wb") as output:
        return subprocess.Popen(
            ["make", target, *args],
            cwd=ROOT,
            env={**os.environ, **settings.to_env()},
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group, as a terminal gives it
        )


def own_instance(settings: Settings, private_postgres: PrivatePostgres) -> Settings:
    return replace(
        settings,
        port=free_port_run(2, for_later=True),
        metrics_port=free_port_run(WORKERS + 2, for_later=True),
        broker_prefix=unique_name("cluster").replace("_", "-"),
        database_url=private_postgres.url(unique_name("cluster")),
        log_level="INFO",
    )


async def wait_until_serving(run: MakeCluster) -> None:
    deadline = time.monotonic() + START_SECONDS
    async with httpx.AsyncClient(timeout=2) as client:
        for url in run.serving_urls():
            while True:
                assert run.process.poll() is None, f"make cluster exited:\n{run.output()[-3000:]}"
                assert time.monotonic() < deadline, run.output()[-3000:]
                try:
                    if (await client.get(url)).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                await asyncio.sleep(0.3)


@asynccontextmanager
async def make_cluster(
    settings: Settings, private_postgres: PrivatePostgres, tmp_path: Path
) -> AsyncIterator[MakeCluster]:
    instance = own_instance(settings, private_postgres)
    amqp_port, epmd_port = cluster_ports()
    log = tmp_path / f"make-cluster-{amqp_port}.log"
    run = MakeCluster(
        start_in_terminal(
            [
                "make",
                "cluster",
                f"CLUSTER_WORKERS={WORKERS}",
                f"CLUSTER_AMQP_PORT={amqp_port}",
                f"CLUSTER_EPMD_PORT={epmd_port}",
            ],
            ROOT,
            {**os.environ, **instance.to_env()},
            log,
        ),
        instance,
        amqp_port,
        epmd_port,
        log,
    )
    try:
        await wait_until_serving(run)
        yield run
    finally:
        run.terminal.kill()  # whatever is left, in whichever process group
        run.terminal.close()
        # Whatever a failed run left: its nodes (started in sessions of their own).
        subprocess.run(
            ["make", "cluster-stop", *run.make_args],
            cwd=ROOT,
            env={**os.environ, **instance.to_env()},
            capture_output=True,
            check=False,
            timeout=120,
        )
        drop_database(instance.database_url)


async def one_trip_across(rider_url: str, driver_url: str) -> None:
    async with httpx.AsyncClient(base_url=rider_url, timeout=10) as http:
        rider = await create_account(http, "rider")
        driver = await create_account(http, "driver")
    async with (
        await connect(rider_url, rider.access) as rider_ws,
        await connect(driver_url, driver.access) as driver_ws,
    ):
        await send(
            rider_ws,
            {"type": "create.trip", "data": {"pick_up_address": "A", "drop_off_address": "B"}},
        )
        trip = (await receive_until(rider_ws, lambda f: f["type"] == "trip.requested", 30))["data"]
        await receive_until(driver_ws, about(trip["id"], "trip.requested"), 30)
        for status, event in (
            ("STARTED", "trip.accepted"),
            ("IN_PROGRESS", "trip.picked_up"),
            ("COMPLETED", "trip.completed"),
        ):
            await send(
                driver_ws, {"type": "update.trip", "data": {"id": trip["id"], "status": status}}
            )
            await receive_until(rider_ws, about(trip["id"], event), 30)


def running_cluster(run: MakeCluster) -> tuple[LocalCluster, list[int]]:
    """The cluster `make cluster` started, with its nodes' process ids."""
    cluster = LocalCluster.load(run.data_dir)
    assert cluster is not None, f"no cluster state in {run.data_dir}"
    assert cluster.running_nodes() == {node.node for node in cluster.nodes}
    assert [node.port for node in cluster.nodes] == [run.amqp_port + n for n in range(NODES)]
    pids = [node.pid for node in cluster.nodes]
    assert all(pid is not None for pid in pids)
    return cluster, [pid for pid in pids if pid is not None]


def assert_all_gone(run: MakeCluster, cluster: LocalCluster, pids: list[int]) -> None:
    output = run.output()
    assert run.terminal.left() == []  # no process of make's session is left
    # A requested stop is no failure: status 0, and no "make: *** ... Interrupt/Error".
    assert run.process.returncode == 0, output[-3000:]
    assert "***" not in output, output[-3000:]
    # uvicorn's lifecycle lines once per gateway (not again for a metrics server).
    for line in ("Started server process", "Shutting down", "Finished server process"):
        assert output.count(line) == 2, f"{line!r}:\n{output[-3000:]}"
    stops = re.findall(r"(\w+\.\d+) stopped \(rc=(-?\d+)\)", output)
    names = {f"dispatcher.{n + 1}" for n in range(WORKERS)} | {"gateway.1", "gateway2.1"}
    assert {name for name, _ in stops} == names, output[-3000:]
    assert {rc for _, rc in stops} == {"0"}, output[-3000:]
    assert output.count("dispatcher stopped") == WORKERS, output[-3000:]
    for node, pid in zip(cluster.nodes, pids, strict=True):
        assert not process_alive(pid, f"RABBITMQ_PID_FILE={node.pid_file}"), node.node
    assert not cluster.epmd.running
    assert not run.data_dir.exists(), "the nodes' data was left behind"
    assert not cluster_dir(run.data_dir).exists(), "the Postgres servers' data was left behind"
    assert "stopping the Postgres cluster" in output
    assert "cluster stopped" in output


async def test_make_cluster_runs_two_gateways_and_three_workers_and_ctrl_c_removes_it_all(
    settings: Settings, private_postgres: PrivatePostgres, tmp_path: Path
) -> None:
    async with make_cluster(settings, private_postgres, tmp_path) as run:
        cluster, pids = running_cluster(run)
        output = run.output()
        assert f"TAXI_AMQP_URL={cluster.amqp_url}" in output
        database_url = re.search(r"TAXI_DATABASE_URL=(\S+)", output)
        assert database_url is not None, output[-3000:]
        assert database_url.group(1).endswith(
            f"/{run.settings.database_name}?target_session_attrs=read-write"
        )
        assert database_url.group(1).count(",") == 1  # the primary and the standby
        # A trip requested on one gateway is offered and accepted on the other.
        await one_trip_across(*run.gateways)
        await one_trip_across(*reversed(run.gateways))
        started = time.monotonic()
        run.terminal.ctrl_c()
        await asyncio.to_thread(run.process.wait, STOP_SECONDS)
        stopped_in = time.monotonic() - started
        assert_all_gone(run, cluster, pids)
    print(f"\nmake cluster stopped {stopped_in:.1f}s after Ctrl-C")


async def test_make_cluster_stop_from_another_terminal_stops_and_removes_it_all(
    settings: Settings, private_postgres: PrivatePostgres, tmp_path: Path
) -> None:
    async with make_cluster(settings, private_postgres, tmp_path) as run:
        cluster, pids = running_cluster(run)
        stop = make("cluster-stop", run.settings, tmp_path / "cluster-stop.log", *run.make_args)
        assert await asyncio.to_thread(stop.wait, STOP_SECONDS) == 0
        # make cluster itself exits, with status 0, once everything stopped.
        await asyncio.to_thread(run.process.wait, STOP_SECONDS)
        assert_all_gone(run, cluster, pids)


async def test_a_taken_port_stops_make_cluster_with_one_line_naming_the_setting(
    settings: Settings, private_postgres: PrivatePostgres, tmp_path: Path
) -> None:
    instance = own_instance(settings, private_postgres)
    amqp_port, epmd_port = cluster_ports()
    args = [f"CLUSTER_AMQP_PORT={amqp_port}", f"CLUSTER_EPMD_PORT={epmd_port}"]
    for taken, whose, setting in (
        (instance.port + 1, "gateway 2's port", "TAXI_PORT"),
        (instance.metrics_port + WORKERS + 1, "gateway 2's metrics port", "TAXI_METRICS_PORT"),
        (amqp_port + 1, "RabbitMQ node 2's AMQP port", "CLUSTER_AMQP_PORT"),
        (epmd_port, "the cluster's epmd port", "CLUSTER_EPMD_PORT"),
    ):
        with socket.socket() as holder:
            holder.bind(("127.0.0.1", taken))
            holder.listen()
            log = tmp_path / f"taken-{taken}.log"
            process = make("cluster", instance, log, f"CLUSTER_WORKERS={WORKERS}", *args)
            assert await asyncio.to_thread(process.wait, START_SECONDS) != 0
        output = log.read_text()
        problem = [line for line in output.splitlines() if f"port {taken} on" in line]
        assert len(problem) == 1, output
        assert setting in problem[0] and "is taken" in problem[0], output
        assert whose in problem[0], output
        assert "honcho" not in output and "starting" not in output  # nothing was started
    assert not default_dir(amqp_port).exists()
