"""Operating the system: metrics move with traffic and are served apart from the public
port, a taken metrics port stops a process in one line, readiness follows the broker,
workers scale out and in."""

from __future__ import annotations

import asyncio
import signal
import socket
from dataclasses import replace
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from shared.settings import Settings
from tests.chaos.services import PrivateRabbitMQ, rabbitmq_stopped
from tests.chaos.traffic import Traffic
from tests.clients import about, connect, create_account, receive_until, send
from tools.processes import (
    ServiceProcess,
    free_port,
    metrics_url,
    start_dispatcher,
    start_gateway,
)

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


async def scrape(url: str) -> Samples:
    async with httpx.AsyncClient(timeout=5) as client:
        response = await client.get(url)
    assert response.status_code == 200
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def start_worker(settings: Settings, log: Path, metrics_port: int) -> ServiceProcess:
    return start_dispatcher(settings, log, metrics_port=metrics_port)


async def test_metrics_move_when_traffic_flows(isolated_settings: Settings, tmp_path: Path) -> None:
    gateway, base_url = start_gateway(isolated_settings, tmp_path)
    gateway_metrics = metrics_url(gateway)
    worker_port = free_port()
    worker = start_worker(isolated_settings, tmp_path / "worker.log", worker_port)
    worker_metrics = f"http://127.0.0.1:{worker_port}/metrics"
    try:
        gateway_before = await scrape(gateway_metrics)
        worker_before = await scrape(worker_metrics)
        assert value(gateway_before, "taxi_gateway_serving") == 1
        async with httpx.AsyncClient(base_url=base_url, timeout=10) as http:
            rider = await create_account(http, "rider")
            driver = await create_account(http, "driver")
        async with (
            await connect(base_url, rider.access) as rider_ws,
            await connect(base_url, driver.access) as driver_ws,
        ):
            connected = await scrape(gateway_metrics)
            assert value(connected, "taxi_gateway_open_connections", role="rider") == 1
            assert value(connected, "taxi_gateway_open_connections", role="driver") == 1
            await send(
                rider_ws,
                {"type": "create.trip", "data": {"pick_up_address": "A", "drop_off_address": "B"}},
            )
            trip = (await receive_until(rider_ws, lambda f: f["type"] == "trip.requested"))["data"]
            await send(
                driver_ws, {"type": "update.trip", "data": {"id": trip["id"], "status": "STARTED"}}
            )
            await receive_until(rider_ws, about(trip["id"], "trip.accepted"))
            await send(driver_ws, {"type": "no.such.type"})
            await receive_until(driver_ws, lambda f: f["type"] == "error")
        gateway_after = await scrape(gateway_metrics)
        worker_after = await scrape(worker_metrics)
    finally:
        worker.stop()
        gateway.stop()

    def moved(before: Samples, after: Samples, name: str, by: float = 1, **labels: str) -> bool:
        return value(after, name, **labels) - value(before, name, **labels) >= by

    assert moved(gateway_before, gateway_after, "taxi_gateway_frames_in_total", type="create.trip")
    assert moved(gateway_before, gateway_after, "taxi_gateway_frames_in_total", type="update.trip")
    assert moved(
        gateway_before, gateway_after, "taxi_gateway_frames_out_total", type="trip.requested", by=2
    )
    assert moved(gateway_before, gateway_after, "taxi_gateway_errors_total", code="unknown_type")
    assert moved(gateway_before, gateway_after, "taxi_gateway_publish_seconds_count", by=2)
    assert value(gateway_after, "taxi_gateway_open_connections", role="rider") == 0
    assert moved(
        worker_before,
        worker_after,
        "taxi_dispatcher_commands_total",
        type="create.trip",
        outcome="applied",
    )
    assert moved(
        worker_before,
        worker_after,
        "taxi_dispatcher_commands_total",
        type="update.trip",
        outcome="applied",
    )
    assert moved(
        worker_before, worker_after, "taxi_dispatcher_handler_seconds_count", type="update.trip"
    )
    assert ("taxi_dispatcher_outbox_backlog", ()) in worker_after


# The gateway's health checks, which stay on its public port with its probes.
PROBES = ("/healthz", "/readyz")


async def test_gateway_metrics_are_served_on_their_own_port_only(
    isolated_settings: Settings, tmp_path: Path
) -> None:
    gateway, base_url = start_gateway(isolated_settings, tmp_path)
    try:
        async with httpx.AsyncClient(timeout=5) as client:
            public = await client.get(f"{base_url}/metrics")
            served = await client.get(metrics_url(gateway))
            health = [(await client.get(f"{base_url}{path}")).status_code for path in PROBES]
    finally:
        gateway.stop()
    assert public.status_code == 404
    assert public.headers["content-type"] == "application/json"
    assert public.json() == {"detail": "nothing here: /metrics", "code": "not_found"}
    assert "taxi_gateway" not in public.text
    assert served.status_code == 200
    assert served.headers["content-type"].startswith("text/plain")
    assert "taxi_gateway_open_connections" in served.text
    assert health == [200, 200]


def run_until_exit(process: ServiceProcess) -> list[str]:
    """Start a process that is to stop by itself; its output's lines."""
    process.start()
    assert process.wait(30) != 0, process.log()
    return process.log().splitlines()


def held_port(host: str) -> socket.socket:
    holder = socket.socket()
    holder.bind((host, 0))
    holder.listen()
    return holder


async def test_a_taken_metrics_port_stops_the_gateway_with_one_line_naming_the_setting(
    isolated_settings: Settings, tmp_path: Path
) -> None:
    with held_port(isolated_settings.host) as holder:
        taken = holder.getsockname()[1]
        own = replace(isolated_settings, port=free_port(), metrics_port=taken)
        output = run_until_exit(ServiceProcess("gateway", own, tmp_path / "gateway.log"))
    # Bound before anything else: no traceback, no connection to the services first.
    assert output == [
        f"gateway: cannot serve metrics on {own.host}:{taken}: Address already in use "
        "(set TAXI_METRICS_PORT to move it)"
    ]


async def test_a_worker_takes_the_port_after_the_gateways_metrics_port(
    isolated_settings: Settings, tmp_path: Path
) -> None:
    """Without --metrics-port, TAXI_METRICS_PORT + 1; a taken one is named in one line."""
    with held_port(isolated_settings.host) as holder:
        taken = holder.getsockname()[1]
        own = replace(isolated_settings, metrics_port=taken - 1)
        output = run_until_exit(ServiceProcess("dispatcher", own, tmp_path / "worker.log"))
    assert output == [
        f"dispatcher: cannot serve metrics on {own.host}:{taken}: Address already in use "
        "(set TAXI_METRICS_PORT to move it)"
    ]


async def wait_for_status(url: str, status: int, within: float = 30) -> dict[str, bool]:
    deadline = asyncio.get_running_loop().time() + within
    async with httpx.AsyncClient(timeout=5) as client:
        while True:
            response = await client.get(url)
            if response.status_code == status:
                return dict(response.json())
            assert asyncio.get_running_loop().time() < deadline, (
                f"{url} stayed {response.status_code}"
            )
            await asyncio.sleep(0.2)


@pytest.mark.timeout(300)  # may be the first to start the private broker
async def test_readiness_follows_the_broker(
    private_settings: Settings, private_rabbitmq: PrivateRabbitMQ, tmp_path: Path
) -> None:
    """On the session's private broker: it is stopped here, never the shared one."""
    gateway, base_url = start_gateway(private_settings, tmp_path)
    worker_port = free_port()
    worker = start_worker(private_settings, tmp_path / "worker.log", worker_port)
    try:
        worker_ready = f"http://127.0.0.1:{worker_port}/readyz"
        assert await wait_for_status(f"{base_url}/readyz", 200) == {
            "database": True,
            "broker": True,
        }
        assert await wait_for_status(worker_ready, 200) == {
            "database": True,
            "broker": True,
            "consuming": True,
        }
        with rabbitmq_stopped(private_rabbitmq):
            assert (await wait_for_status(f"{base_url}/readyz", 503))["broker"] is False
            assert (await wait_for_status(worker_ready, 503))["broker"] is False
            async with httpx.AsyncClient(timeout=5) as client:
                assert (await client.get(f"{base_url}/healthz")).status_code == 200
        assert await wait_for_status(f"{base_url}/readyz", 200) == {
            "database": True,
            "broker": True,
        }
        assert await wait_for_status(worker_ready, 200) == {
            "database": True,
            "broker": True,
            "consuming": True,
        }
    finally:
        worker.stop()
        gateway.stop()


async def test_an_added_worker_takes_a_share_and_a_removed_one_loses_nothing(
    isolated_settings: Settings, tmp_path: Path
) -> None:
    gateway, base_url = start_gateway(isolated_settings, tmp_path)
    first = start_worker(isolated_settings, tmp_path / "first.log", free_port())
    second_port = free_port()
    try:
        async with httpx.AsyncClient(base_url=base_url, timeout=10) as http:
            traffic = await Traffic.open(http, base_url, 8)
            try:
                burst = asyncio.create_task(traffic.run(10))
                await traffic.wait_until_completed(10)
                second = start_worker(isolated_settings, tmp_path / "second.log", second_port)
                await traffic.wait_until_completed(50)
                share = await scrape(f"http://127.0.0.1:{second_port}/metrics")
                first.signal(signal.SIGTERM)
                assert first.wait(30) == 0
                await burst
            finally:
                await traffic.close()
        handled = sum(
            v
            for (name, labels), v in share.items()
            if name == "taxi_dispatcher_commands_total" and ("outcome", "applied") in labels
        )
        assert handled > 0, "the added worker took no commands"
        statuses = {
            (await http_status(base_url, pair.rider.account.access, trip_id))
            for pair in traffic.pairs
            for trip_id in pair.trips.values()
        }
        assert statuses == {"COMPLETED"}
        assert sum(len(pair.trips) for pair in traffic.pairs) == 80
        second.stop()
    finally:
        first.stop()
        gateway.stop()


async def http_status(base_url: str, token: str, trip_id: str) -> str:
    async with httpx.AsyncClient(base_url=base_url, timeout=10) as http:
        response = await http.get(
            f"/api/trip/{trip_id}/", headers={"Authorization": f"Bearer {token}"}
        )
    return str(response.json()["status"])
