"""Several gateway processes on one host (TAXI_GATEWAY_PROCESSES): one port, a gateway
per process, a trip across them, one stop for all, and a crashed process replaced."""

from __future__ import annotations

import asyncio
import functools
import signal
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import AsyncExitStack, contextmanager
from dataclasses import replace
from pathlib import Path

import httpx
import psutil
import pytest
from prometheus_client.parser import text_string_to_metric_families

from gateway.processes import START_SECONDS
from shared.settings import Settings
from tests.clients import about, connect, create_account, receive_until, send
from tools.processes import ServiceProcess, free_port, start_dispatcher

PROCESSES = 2
# Sockets opened across the processes: all of them landing on one process (the kernel
# spreads connections by their addresses) has a chance of 2 in 2**16.
DRIVERS = 16
ADDRESSES = {"pick_up_address": "123 Main Street", "drop_off_address": "456 South Street"}


def metrics_ports() -> int:
    """A metrics port with the one below it free too (process 1 takes that)."""
    while True:
        port = free_port()
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port - 1))
            except OSError:
                continue
        return port


@contextmanager
def gateway_processes(settings: Settings, log_dir: Path) -> Iterator[tuple[ServiceProcess, str]]:
    own = replace(
        settings, port=free_port(), metrics_port=metrics_ports(), gateway_processes=PROCESSES
    )
    gateway = ServiceProcess("gateway", own, log_dir / "gateway.log").start()
    try:
        wait_until_all_serve(gateway)
        yield gateway, f"http://127.0.0.1:{own.port}"
    finally:
        gateway.stop()


def wait_until_all_serve(gateway: ServiceProcess) -> None:
    """Each process accepting connections on the shared port: its metrics answer from
    its start, before it listens, and any one process's /readyz answers for the port."""
    for process in range(PROCESSES):
        url = metrics_of(gateway.settings, process)
        gateway.wait_until(functools.partial(serving, url), f"process {process} not serving")


def metrics_of(settings: Settings, process: int) -> str:
    return f"http://127.0.0.1:{settings.metrics_port - process}/metrics"


def serving(url: str) -> bool:
    try:
        return metric_sum(httpx.get(url, timeout=1).text, "taxi_gateway_serving") == 1
    except httpx.HTTPError:
        return False


async def open_connections(url: str) -> float:
    async with httpx.AsyncClient(timeout=5) as client:
        response = await client.get(url)
    return metric_sum(response.text, "taxi_gateway_open_connections")


def metric_sum(exposition: str, name: str) -> float:
    return sum(
        sample.value
        for family in text_string_to_metric_families(exposition)
        for sample in family.samples
        if sample.name == name
    )


@pytest.fixture
def settings_with_worker(isolated_settings: Settings, tmp_path: Path) -> Iterator[Settings]:
    worker = start_dispatcher(isolated_settings, tmp_path / "dispatcher.log")
    try:
        yield isolated_settings
    finally:
        worker.stop()


async def test_the_processes_share_the_port_and_a_trip_crosses_them(
    settings_with_worker: Settings, tmp_path: Path
) -> None:
    with gateway_processes(settings_with_worker, tmp_path) as (gateway, base_url):
        async with (
            httpx.AsyncClient(base_url=base_url, timeout=10) as http,
            AsyncExitStack() as stack,
        ):
            rider = await create_account(http, "rider")
            drivers = [await create_account(http, "driver") for _ in range(DRIVERS)]
            rider_ws = await stack.enter_async_context(await connect(base_url, rider.access))
            sockets = [
                await stack.enter_async_context(await connect(base_url, driver.access))
                for driver in drivers
            ]
            held = [
                await open_connections(metrics_of(gateway.settings, process))
                for process in range(PROCESSES)
            ]
            # A trip without a pick-up point is offered to every free driver, on every
            # process; the one who takes it may be on either, the rider's on one of them.
            await send(rider_ws, {"type": "create.trip", "data": {**ADDRESSES, "rider": rider.id}})
            requested = await receive_until(rider_ws, lambda f: f["type"] == "trip.requested")
            trip_id = requested["data"]["id"]
            offers = await asyncio.gather(
                *(receive_until(ws, about(trip_id, "trip.requested")) for ws in sockets)
            )
            winner = drivers[-1]
            await send(
                sockets[-1],
                {
                    "type": "update.trip",
                    "data": {"id": trip_id, "status": "STARTED", "driver": winner.id},
                },
            )
            accepted = await receive_until(rider_ws, about(trip_id, "trip.accepted"))

        statuses = gateway.stop()

    assert sum(held) == DRIVERS + 1
    assert all(count > 0 for count in held), held
    assert len(offers) == DRIVERS
    assert accepted["data"]["driver"]["id"] == winner.id
    assert statuses == 0
    log = gateway.log()
    assert "process=gateway-0" in log and "process=gateway-1" in log


async def test_a_process_that_dies_is_started_again_while_the_others_run_on(
    settings_with_worker: Settings, tmp_path: Path
) -> None:
    with gateway_processes(settings_with_worker, tmp_path) as (gateway, _):
        ready = time.monotonic()  # every process was started before this
        parent = psutil.Process(gateway.pid)
        children = parent.children()
        assert len(children) == PROCESSES
        # Run past start-up: a process that dies sooner counts as failing to start. A
        # wait for time itself, on this test's clock (psutil's create_time counts from a
        # boot time rounded to the second).
        await asyncio.sleep(max(0.0, ready + START_SECONDS - time.monotonic()) + 0.1)
        killed = children[0]
        killed.send_signal(signal.SIGKILL)

        def replaced() -> bool:
            now = parent.children()
            return len(now) == PROCESSES and killed.pid not in {c.pid for c in now}

        await wait_for(replaced, 20)
        wait_until_all_serve(gateway)
        survivor = children[1]
        assert survivor.is_running()

    assert "starting it again" in gateway.log()


async def test_a_taken_port_stops_them_all_with_one_line_naming_the_setting(
    isolated_settings: Settings, tmp_path: Path
) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        taken = holder.getsockname()[1]
        own = replace(
            isolated_settings, port=taken, metrics_port=metrics_ports(), gateway_processes=2
        )
        gateway = ServiceProcess("gateway", own, tmp_path / "gateway.log").start()
        status = gateway.wait(30)

    assert status == 1
    assert gateway.log().splitlines() == [
        f"gateway: port {taken} is in use (set TAXI_PORT to move it)"
    ]


async def wait_for(condition: Callable[[], bool], seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "not in time"
        await asyncio.sleep(0.1)
