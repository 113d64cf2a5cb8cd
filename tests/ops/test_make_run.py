"""`make run` as an operator uses it: two instances side by side, a taken port named in
one line, Ctrl-C after a burst stops everything promptly, and the clean-up targets."""

from __future__ import annotations

import asyncio
import os
import re
import socket
import subprocess
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from pathlib import Path

import aio_pika
import httpx
import psycopg
import pytest

from shared import broker
from shared.migrate import migrate, with_database
from shared.settings import Settings
from shared.topology import Topology
from tests.chaos.traffic import Traffic
from tests.clients import about, connect, create_account, receive_until, send
from tests.ops.terminal import InTerminal, start_in_terminal
from tools.cleanup import unique_name
from tools.processes import free_port, free_port_run

WORKERS = 2
# Installing on a new machine is part of `make run`'s first start.
START_SECONDS = 240
# What the issue asks of a Ctrl-C: every process gone, with status 0, within this.
STOP_SECONDS = 10


@dataclass
class MakeRun:
    terminal: InTerminal
    settings: Settings
    log: Path

    @property
    def process(self) -> subprocess.Popen[bytes]:
        return self.terminal.process

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.settings.port}"

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def interrupt(self) -> float:
        """Ctrl-C in its terminal; the seconds until make itself has exited."""
        started = time.monotonic()
        self.terminal.ctrl_c()
        self.process.wait(60)
        return time.monotonic() - started


def own_instance(settings: Settings, metrics_port: int | None = None) -> Settings:
    """Settings no other instance on this machine shares: ports, prefix and database.
    The metrics ports are TAXI_METRICS_PORT (the gateway's) and the WORKERS after it."""
    return replace(
        settings,
        port=free_port(),
        metrics_port=metrics_port or free_port_run(WORKERS + 1, for_later=True),
        broker_prefix=unique_name("run").replace("_", "-"),
        database_url=with_database(settings.database_url, unique_name("run")),
        log_level="INFO",
    )


def make(target: str, settings: Settings, log: Path, *args: str) -> subprocess.Popen[bytes]:
    with log.open("wb") as output:
        return subprocess.Popen(
            ["make", target, *args],
            cwd=Path(__file__).resolve().parents[2],
            env={**os.environ, **settings.to_env()},
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group, as a terminal gives it
        )


def serving_urls(settings: Settings) -> list[str]:
    """What answers 200 once an instance is up: the gateway's readiness on TAXI_PORT,
    its metrics on TAXI_METRICS_PORT, and worker n's readiness on TAXI_METRICS_PORT + n."""
    return [
        f"http://127.0.0.1:{settings.port}/readyz",
        f"http://127.0.0.1:{settings.metrics_port}/metrics",
        *(f"http://127.0.0.1:{settings.metrics_port + n}/readyz" for n in range(1, WORKERS + 1)),
    ]


async def wait_until_serving(run: MakeRun) -> None:
    """Until the gateway and every worker answer on their ports."""
    deadline = time.monotonic() + START_SECONDS
    async with httpx.AsyncClient(timeout=2) as client:
        for url in serving_urls(run.settings):
            while True:
                assert run.process.poll() is None, f"make run exited:\n{run.output()[-3000:]}"
                assert time.monotonic() < deadline, run.output()[-3000:]
                try:
                    if (await client.get(url)).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                await asyncio.sleep(0.2)


async def assert_metrics_where_documented(settings: Settings) -> None:
    """The gateway's metrics on TAXI_METRICS_PORT and not on TAXI_PORT, each worker's on
    the ports after it."""
    async with httpx.AsyncClient(timeout=5) as client:
        public = await client.get(f"http://127.0.0.1:{settings.port}/metrics")
        assert public.status_code == 404
        assert public.json()["code"] == "not_found"
        gateway = await client.get(f"http://127.0.0.1:{settings.metrics_port}/metrics")
        assert "taxi_gateway_open_connections" in gateway.text
        assert "taxi_dispatcher_" not in gateway.text
        for n in range(1, WORKERS + 1):
            worker = await client.get(f"http://127.0.0.1:{settings.metrics_port + n}/metrics")
            assert "taxi_dispatcher_commands_total" in worker.text
            assert "taxi_gateway_" not in worker.text


@asynccontextmanager
async def make_run(settings: Settings, tmp_path: Path) -> AsyncIterator[MakeRun]:
    log = tmp_path / f"make-run-{settings.port}.log"
    run = MakeRun(
        start_in_terminal(
            ["make", "run", f"WORKERS={WORKERS}"],
            Path(__file__).resolve().parents[2],
            {**os.environ, **settings.to_env()},
            log,
        ),
        settings,
        log,
    )
    try:
        await wait_until_serving(run)
        yield run
    finally:
        run.terminal.kill()  # whatever is left, in whichever process group
        run.terminal.close()
        subprocess.run(
            ["make", "reset"],
            cwd=Path(__file__).resolve().parents[2],
            env={**os.environ, **settings.to_env()},
            capture_output=True,
            check=False,
        )


async def one_trip(base_url: str) -> None:
    async with httpx.AsyncClient(base_url=base_url, timeout=10) as http:
        rider = await create_account(http, "rider")
        driver = await create_account(http, "driver")
    async with (
        await connect(base_url, rider.access) as rider_ws,
        await connect(base_url, driver.access) as driver_ws,
    ):
        await send(
            rider_ws,
            {"type": "create.trip", "data": {"pick_up_address": "A", "drop_off_address": "B"}},
        )
        trip = (await receive_until(rider_ws, lambda f: f["type"] == "trip.requested", 30))["data"]
        for status, event in (
            ("STARTED", "trip.accepted"),
            ("IN_PROGRESS", "trip.picked_up"),
            ("COMPLETED", "trip.completed"),
        ):
            await send(
                driver_ws, {"type": "update.trip", "data": {"id": trip["id"], "status": status}}
            )
            await receive_until(rider_ws, about(trip["id"], event), 30)


def assert_stopped_cleanly(run: MakeRun, seconds: float) -> None:
    output = run.output()
    assert seconds <= STOP_SECONDS, f"stopping took {seconds:.1f}s:\n{output[-3000:]}"
    # A requested stop is no failure: status 0, and no "make: *** ... Interrupt".
    assert run.process.returncode == 0, output[-3000:]
    assert "***" not in output, output[-3000:]
    # uvicorn's lifecycle lines once, for the gateway (not again for a metrics server).
    for line in ("Started server process", "Shutting down", "Finished server process"):
        assert output.count(line) == 1, f"{line!r}:\n{output[-3000:]}"
    assert run.terminal.left() == []  # no process of its session is left
    stops = re.findall(r"(\w+\.\d+) stopped \(rc=(-?\d+)\)", output)
    names = {f"dispatcher.{n + 1}" for n in range(WORKERS)} | {"gateway.1"}
    assert {name for name, _ in stops} == names, output[-3000:]
    assert {rc for _, rc in stops} == {"0"}, output[-3000:]
    assert "SIGKILL" not in output, output[-3000:]
    assert output.count("dispatcher stopped") == WORKERS, output[-3000:]


@pytest.mark.timeout(600)
async def test_two_instances_run_side_by_side_and_ctrl_c_stops_each_promptly_after_a_burst(
    settings: Settings, tmp_path: Path
) -> None:
    # The second instance's metrics ports start right after the first one's last: any
    # port counted twice, or beyond the documented range, would collide.
    first = own_instance(settings, free_port_run(2 * (WORKERS + 1), for_later=True))
    second = own_instance(settings, first.metrics_port + WORKERS + 1)
    async with make_run(first, tmp_path) as one, make_run(second, tmp_path) as other:
        # Both are serving: the gateways on their TAXI_PORT and TAXI_METRICS_PORT, the
        # workers on the ports after it (make_run waited on them all).
        for instance in (first, second):
            await assert_metrics_where_documented(instance)
        await one_trip(other.base_url)
        async with httpx.AsyncClient(base_url=one.base_url, timeout=10) as http:
            traffic = await Traffic.open(http, one.base_url, 20)
            try:
                await traffic.run(10)  # 200 trips, 800 commands
            finally:
                await traffic.close()
        assert traffic.completed == 200
        stopped_in = one.interrupt()
        assert_stopped_cleanly(one, stopped_in)
        # The other instance did not notice.
        await one_trip(other.base_url)
        assert_stopped_cleanly(other, other.interrupt())


async def test_a_taken_port_stops_make_run_with_one_line_naming_the_setting(
    settings: Settings, tmp_path: Path
) -> None:
    instance = own_instance(settings)
    for taken, whose, setting in (
        (instance.port, "the gateway's port", "TAXI_PORT"),
        (instance.metrics_port, "the gateway's metrics port", "TAXI_METRICS_PORT"),
        (instance.metrics_port + WORKERS, f"worker {WORKERS}'s metrics port", "TAXI_METRICS_PORT"),
    ):
        with socket.socket() as holder:
            holder.bind((instance.host, taken))
            holder.listen()
            log = tmp_path / f"taken-{taken}.log"
            process = make("run", instance, log, f"WORKERS={WORKERS}")
            assert process.wait(START_SECONDS) != 0
        output = log.read_text()
        problem = [line for line in output.splitlines() if f"port {taken}" in line]
        assert len(problem) == 1, output
        assert setting in problem[0] and "is taken" in problem[0], output
        assert whose in problem[0], output
        assert "honcho" not in output  # nothing was started


async def test_clean_broker_and_reset_remove_what_an_instance_created(
    settings: Settings, tmp_path: Path
) -> None:
    instance = replace(own_instance(settings), media_dir=str(tmp_path / "media"))
    await asyncio.to_thread(migrate, instance.database_url)
    # A user's photo, as sign-up stores it, and another instance's beside it.
    photos = tmp_path / "media" / "photos"
    photos.mkdir(parents=True)
    (photos / "ours.jpg").write_bytes(b"jpeg")
    (photos / "theirs.jpg").write_bytes(b"jpeg")
    with psycopg.connect(instance.database_url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO users (username, password_hash, user_group, photo)"
            " VALUES ('ann@example.com', 'x', 'rider', '/media/photos/ours.jpg')"
        )
    topology = Topology(instance.broker_prefix)
    connection = await aio_pika.connect(instance.amqp_url)
    async with connection:
        channel = await connection.channel()
        commands, _ = await broker.declare_exchanges(channel, topology)
        await broker.declare_locations_exchange(channel, topology)
        await broker.declare_dispatcher_queue(channel, topology, commands)

    def run(target: str) -> str:
        log = tmp_path / f"{target}.log"
        assert make(target, instance, log).wait(120) == 0, log.read_text()
        return log.read_text()

    cleaned = run("clean-broker")
    for name in (*topology.exchanges, *topology.shared_queues):
        assert name in cleaned, cleaned
    assert (
        f"{len(topology.exchanges) + len(topology.shared_queues)} exchanges and queues" in cleaned
    )
    connection = await aio_pika.connect(instance.amqp_url)
    async with connection:
        channel = await connection.channel()
        with pytest.raises(aio_pika.exceptions.ChannelClosed):
            await channel.declare_queue(topology.dispatcher_queue, passive=True)
    reset = run("reset")
    assert "0 exchanges and queues removed" in reset
    assert "removed 1 of its users' photos" in reset
    assert f"database {instance.database_name}: dropped" in reset
    assert not (photos / "ours.jpg").exists()
    assert (photos / "theirs.jpg").exists()
    again = run("reset")
    assert f"database {instance.database_name}: did not exist" in again
    assert "removed 0 of its users' photos" in again
