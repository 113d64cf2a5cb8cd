"""A gateway killed under its clients, a poison command, and graceful shutdowns."""

from __future__ import annotations

import asyncio
import signal
import time
import uuid
from dataclasses import replace
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import aio_pika
import asyncpg
import httpx
import pytest
from websockets.exceptions import ConnectionClosed

from shared.commands import CREATE_TRIP, Command, CreateTrip
from shared.settings import Settings
from shared.topology import Topology, command_key
from tests.chaos.relay import Relay
from tests.chaos.traffic import LiveSocket, Traffic, rider_deliveries
from tests.clients import about, connect, create_account, receive, receive_until, send
from tools.processes import ServiceProcess, free_port, start_dispatcher, start_gateway


async def test_clients_of_a_killed_gateway_get_what_they_missed_after_reconnecting(
    isolated_settings: Settings, tmp_path: Path
) -> None:
    """Riders on gateway A, drivers on gateway B. A dies; B's drivers finish the trips;
    A comes back on the same address and each rider receives the missed steps, in order."""
    port = free_port()
    gateway_a, url_a = start_gateway(isolated_settings, tmp_path, port)
    gateway_b, url_b = start_gateway(isolated_settings, tmp_path)
    worker = start_dispatcher(isolated_settings, tmp_path / "worker.log")
    processes = [gateway_a, gateway_b, worker]
    try:
        async with httpx.AsyncClient(base_url=url_b, timeout=10) as http:
            riders = [LiveSocket(url_a, await create_account(http, "rider")) for _ in range(5)]
            drivers = [
                await connect(url_b, (await create_account(http, "driver")).access) for _ in riders
            ]
            for rider in riders:
                await rider.start()
            trips = []
            for rider, driver in zip(riders, drivers, strict=True):
                await rider.send(
                    {
                        "type": "create.trip",
                        "data": {"pick_up_address": "A", "drop_off_address": "B"},
                    }
                )
                requested = await rider.wait_for(lambda f: f["type"] == "trip.requested", 10)
                assert requested is not None
                trips.append(requested["data"]["id"])
                await send(
                    driver, {"type": "update.trip", "data": {"id": trips[-1], "status": "STARTED"}}
                )
                await receive_until(driver, about(trips[-1], "trip.accepted"))

            gateway_a.signal(signal.SIGKILL)
            gateway_a.wait(10)
            for trip_id, driver in zip(trips, drivers, strict=True):
                for status, event in (
                    ("IN_PROGRESS", "trip.picked_up"),
                    ("COMPLETED", "trip.completed"),
                ):
                    await send(
                        driver, {"type": "update.trip", "data": {"id": trip_id, "status": status}}
                    )
                    await receive_until(driver, about(trip_id, event))
            gateway_a, _ = start_gateway(isolated_settings, tmp_path, port)
            processes.append(gateway_a)

            for rider, trip_id in zip(riders, trips, strict=True):
                done = await rider.wait_for(
                    lambda f, t=trip_id: f["type"] == "trip.completed" and f["data"]["id"] == t, 20
                )
                assert done is not None, "a rider never got the steps sent while they were away"
                steps = [f["type"] for f in rider.about(trip_id)]
                assert steps == [
                    "trip.requested",
                    "trip.accepted",
                    "trip.picked_up",
                    "trip.completed",
                ]
                assert rider.reconnects >= 1
            for rider in riders:
                await rider.stop()
            for driver in drivers:
                await driver.close()
    finally:
        for process in processes:
            process.stop()


async def dead_letters(
    settings: Settings, amqp: aio_pika.abc.AbstractConnection
) -> list[aio_pika.abc.AbstractIncomingMessage]:
    channel = await amqp.channel()
    queue = await channel.declare_queue(
        Topology(settings.broker_prefix).dead_letter_queue, passive=True
    )
    found = []
    while (message := await queue.get(fail=False)) is not None:
        await message.ack()
        found.append(message)
    return found


async def test_a_poison_command_is_dead_lettered_and_the_worker_carries_on(
    isolated_settings: Settings, tmp_path: Path, db: asyncpg.Connection
) -> None:
    gateway, base_url = start_gateway(isolated_settings, tmp_path)
    worker = start_dispatcher(isolated_settings, tmp_path / "worker.log")
    try:
        async with httpx.AsyncClient(base_url=base_url, timeout=10) as http:
            rider = await create_account(http, "rider")
            poisoner = await create_account(http, "rider")
        # The poisoner's sequence is at its end: numbering their trip.requested fails
        # every time (the database refuses to count past a bigint), whichever worker
        # takes the command. A refusal, unnumbered, can still reach them.
        await db.execute(
            "UPDATE users SET last_seq = 9223372036854775807 WHERE id = $1", poisoner.id
        )
        poison = Command(uuid.uuid4(), CREATE_TRIP, poisoner.id, CreateTrip("A", "B"), time.time())
        amqp = await aio_pika.connect(isolated_settings.amqp_url)
        async with amqp, await connect(base_url, poisoner.access) as poisoner_ws:
            channel = await amqp.channel(publisher_confirms=True)
            commands = await channel.get_exchange(
                Topology(isolated_settings.broker_prefix).commands_exchange
            )
            await commands.publish(
                aio_pika.Message(poison.encode(), message_id=str(poison.id)),
                command_key(CREATE_TRIP),
            )
            # The worker carries on: a normal trip after the poison goes through.
            async with await connect(base_url, rider.access) as ws:
                await send(
                    ws,
                    {
                        "type": "create.trip",
                        "data": {"pick_up_address": "C", "drop_off_address": "D"},
                    },
                )
                assert (await receive_until(ws, lambda f: f["type"] == "trip.requested"))["data"][
                    "pick_up_address"
                ] == "C"
            # The sender is told the request was given up on, with an error frame that
            # names it.
            told = await receive_until(poisoner_ws, lambda f: f["type"] == "error", 60)
            worker.wait_for_log(f"dead-lettering message_id={poison.id}")
            letters = await dead_letters(isolated_settings, amqp)
        assert [m.message_id for m in letters] == [str(poison.id)]
        assert worker.log().count(f"dead-lettering message_id={poison.id}") == 1
        assert worker.poll() is None
        assert told["data"]["code"] == "internal_error"
        assert told["data"]["request"] == CREATE_TRIP
        assert "not applied" in told["data"]["message"]
        assert await db.fetchval("SELECT count(*) FROM trips WHERE rider_id = $1", poisoner.id) == 0
    finally:
        worker.stop()
        gateway.stop()


async def test_sigterm_to_a_busy_worker_finishes_its_commands_and_exits_0(
    isolated_settings: Settings, tmp_path: Path, db: asyncpg.Connection
) -> None:
    gateway, base_url = start_gateway(isolated_settings, tmp_path)
    first = start_dispatcher(isolated_settings, tmp_path / "first.log")
    second = start_dispatcher(isolated_settings, tmp_path / "second.log")
    try:
        async with httpx.AsyncClient(base_url=base_url, timeout=10) as http:
            traffic = await Traffic.open(http, base_url, 10)
            try:
                burst = asyncio.create_task(traffic.run(6))
                await traffic.wait_until_completed(15)
                first.signal(signal.SIGTERM)
                started = time.monotonic()
                assert first.wait(30) == 0
                stopped_in = time.monotonic() - started
                await burst
            finally:
                await traffic.close()
        trip_ids = [t for pair in traffic.pairs for t in pair.trips.values()]
        statuses = await db.fetch("SELECT status FROM trips WHERE id = ANY($1::uuid[])", trip_ids)
        assert [row["status"] for row in statuses] == ["COMPLETED"] * 60
        assert "dispatcher stopped" in first.log()
        print(f"\nworker stopped {stopped_in:.2f}s after SIGTERM, resends={traffic.resends}")
    finally:
        second.stop()
        gateway.stop()


async def test_sigterm_to_the_gateway_closes_sockets_with_1001(
    isolated_settings: Settings, tmp_path: Path
) -> None:
    gateway, base_url = start_gateway(isolated_settings, tmp_path)
    try:
        async with httpx.AsyncClient(base_url=base_url, timeout=10) as http:
            rider = await create_account(http, "rider")
        async with await connect(base_url, rider.access) as ws:
            await send(ws, {"type": "echo.message", "data": "hi"})
            await receive(ws)
            gateway.signal(signal.SIGTERM)
            with pytest.raises(ConnectionClosed) as closed:
                await receive(ws)
        assert closed.value.rcvd is not None
        assert closed.value.rcvd.code == 1001
        assert gateway.wait(15) == 0
    finally:
        gateway.stop()


async def wait_until_not_ready(url: str) -> None:
    async with httpx.AsyncClient(timeout=5) as client:
        for _ in range(300):
            if (await client.get(url)).status_code == 503:
                return
            await asyncio.sleep(0.1)
    raise AssertionError(f"{url} stayed ready with its broker cut off")


async def test_sigterm_to_a_worker_whose_broker_is_unreachable_stops_it_at_once(
    isolated_settings: Settings, tmp_path: Path
) -> None:
    broker_address = urlsplit(isolated_settings.amqp_url)
    relay = Relay(broker_address.hostname or "127.0.0.1", broker_address.port or 5672)
    credentials = f"{broker_address.username}:{broker_address.password}"
    through_relay = broker_address._replace(netloc=f"{credentials}@127.0.0.1:{await relay.start()}")
    metrics_port = free_port()
    worker = await asyncio.to_thread(
        start_dispatcher,
        replace(isolated_settings, amqp_url=urlunsplit(through_relay)),
        tmp_path / "worker.log",
        metrics_port=metrics_port,
    )
    try:
        await relay.cut()
        await wait_until_not_ready(f"http://127.0.0.1:{metrics_port}/readyz")
        worker.signal(signal.SIGTERM)
        started = time.monotonic()
        status = await asyncio.to_thread(worker.wait, 30)
        stopped_in = time.monotonic() - started
    finally:
        worker.stop()
    assert status == 0, worker.log()
    # A supervisor (honcho, the kubelet) kills what takes longer than about 5 s.
    assert stopped_in < 5, f"stopped {stopped_in:.1f}s after SIGTERM:\n{worker.log()}"
    assert "broker unreachable" in worker.log() and "dispatcher stopped" in worker.log()


async def test_clients_of_a_gateway_killed_mid_burst_resume_on_the_other_and_miss_nothing(
    isolated_settings: Settings, tmp_path: Path, db: asyncpg.Connection
) -> None:
    processes: list[ServiceProcess] = []
    try:
        doomed, url_a = start_gateway(isolated_settings, tmp_path)
        processes.append(doomed)
        survivor, url_b = start_gateway(isolated_settings, tmp_path)
        processes.append(survivor)
        for n in range(2):
            processes.append(start_dispatcher(isolated_settings, tmp_path / f"w{n}.log"))
        # Every client starts on gateway A and falls back to B, as behind a balancer.
        async with httpx.AsyncClient(base_url=url_b, timeout=10) as http:
            traffic = await Traffic.open(http, [url_a, url_b], 10)
            try:
                burst = asyncio.create_task(traffic.run(6))
                await traffic.wait_until_completed(15)
                doomed.signal(signal.SIGKILL)
                assert doomed.wait(10) == -signal.SIGKILL
                await burst
                delivery = await rider_deliveries(traffic, wait_seconds=60)
            finally:
                await traffic.close()
    finally:
        for process in processes:
            process.stop()
    trip_ids = [t for pair in traffic.pairs for t in pair.trips.values()]
    statuses = await db.fetch("SELECT status FROM trips WHERE id = ANY($1::uuid[])", trip_ids)
    assert [row["status"] for row in statuses] == ["COMPLETED"] * 60
    assert delivery.missing == []
    assert delivery.duplicates == 0
    for pair in traffic.pairs:
        for client in (pair.rider, pair.driver):
            assert client.connected_to[0] == url_a and client.connected_to[-1] == url_b
            numbered = [f["seq"] for f in client.frames if "seq" in f]
            assert numbered == list(range(1, len(numbered) + 1)), "a gap or a repeat"
