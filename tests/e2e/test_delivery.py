"""Nothing twice, never silence: redelivered commands and commands the broker refuses."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import aio_pika
import asyncpg
import httpx
import pytest

from shared.commands import CREATE_TRIP, UPDATE_TRIP, Command, CreateTrip, UpdateTrip
from shared.settings import Settings
from shared.topology import Topology, command_key
from shared.trips import Status
from tests.clients import (
    about,
    connect,
    create_account,
    is_error,
    receive,
    receive_until,
    rider_and_driver,
    send,
)
from tests.e2e.test_dispatch import request_trip, update
from tools.cleanup import delete_broker_objects
from tools.processes import ServiceProcess, start_gateway


async def test_a_redelivered_command_changes_nothing_twice(
    http: httpx.AsyncClient,
    base_url: str,
    settings: Settings,
    amqp: aio_pika.abc.AbstractConnection,
    dispatchers: list[ServiceProcess],
) -> None:
    async with rider_and_driver(http, base_url) as (rider, driver, rider_ws, driver_ws):
        trip = await request_trip(rider_ws, rider)
        accept = Command(
            id=uuid.uuid4(),
            type=UPDATE_TRIP,
            user_id=driver.id,
            data=UpdateTrip(trip_id=uuid.UUID(trip["id"]), status=Status.STARTED),
            sent_at=0.0,
        )
        channel = await amqp.channel(publisher_confirms=True)
        commands = await channel.get_exchange(Topology(settings.broker_prefix).commands_exchange)
        for _ in range(2):  # the same message id twice, as after a crash before the ack
            await commands.publish(
                aio_pika.Message(accept.encode(), message_id=str(accept.id)),
                command_key(UPDATE_TRIP),
            )
        await receive_until(driver_ws, about(trip["id"], "trip.requested"))
        accepted = await receive_until(driver_ws, lambda f: is_error(f) or about(trip["id"])(f))
        assert accepted["type"] == "trip.accepted"
        wait_for_any_log(dispatchers, f"duplicate ignored message_id={accept.id}")
        # Had the duplicate been applied again, the driver's next frame would be the
        # refusal of accepting their own trip twice; instead it is their next step.
        await send(driver_ws, update(trip, "IN_PROGRESS", driver))
        next_frame = await receive_until(driver_ws, lambda f: is_error(f) or about(trip["id"])(f))
        assert next_frame["type"] == "trip.picked_up"
        assert (await receive_until(rider_ws, about(trip["id"], "trip.accepted")))["event_id"] == (
            accepted["event_id"]
        )


def wait_for_any_log(processes: list[ServiceProcess], text: str) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if any(text in process.log() for process in processes):
            return
        time.sleep(0.05)
    raise AssertionError(f"no process logged {text!r}")


@pytest.fixture
def gateway_without_command_queue(
    settings: Settings, log_dir: Path
) -> Iterator[tuple[Settings, str]]:
    """A gateway on a prefix of its own whose command queue is gone: nothing can route."""
    isolated = replace(settings, broker_prefix=f"{settings.broker_prefix}-lonely")
    process, url = start_gateway(isolated, log_dir)
    try:
        yield isolated, url
    finally:
        process.stop()
        asyncio.run(delete_broker_objects(isolated))


async def test_a_command_the_broker_cannot_route_gets_an_error_frame(
    http: httpx.AsyncClient, gateway_without_command_queue: tuple[Settings, str]
) -> None:
    isolated, url = gateway_without_command_queue
    connection = await aio_pika.connect(isolated.amqp_url)
    async with connection:
        channel = await connection.channel()
        await channel.queue_delete(Topology(isolated.broker_prefix).dispatcher_queue)
    rider = await create_account(http, "rider")
    async with await connect(url, rider.access) as ws:
        await send(
            ws,
            {"type": "create.trip", "data": {"pick_up_address": "A", "drop_off_address": "B"}},
        )
        error = await receive_until(ws, is_error)
        assert error["data"]["code"] == "service_unavailable"
        assert error["data"]["request"] == "create.trip"
        assert "send it again with the same request_id" in error["data"]["message"]
        await send(ws, {"type": "echo.message", "data": "still open"})
        await receive_until(ws, lambda f: f["type"] == "echo.message")


async def test_a_create_delivered_twice_makes_one_trip_and_one_set_of_notifications(
    http: httpx.AsyncClient,
    base_url: str,
    settings: Settings,
    amqp: aio_pika.abc.AbstractConnection,
    dispatchers: list[ServiceProcess],
    db: asyncpg.Connection,
) -> None:
    rider = await create_account(http, "rider")
    create = Command(
        id=uuid.uuid4(),
        type=CREATE_TRIP,
        user_id=rider.id,
        data=CreateTrip("Twice Street", "Once Avenue"),
        sent_at=time.time(),
    )
    async with await connect(base_url, rider.access) as rider_ws:
        channel = await amqp.channel(publisher_confirms=True)
        commands = await channel.get_exchange(Topology(settings.broker_prefix).commands_exchange)
        for _ in range(2):
            await commands.publish(
                aio_pika.Message(create.encode(), message_id=str(create.id)),
                command_key(CREATE_TRIP),
            )
        # The trip's id is the worker's own (not derived from the command's).
        first = await receive_until(rider_ws, lambda f: f["type"] == "trip.requested")
        trip_id = first["data"]["id"]
        wait_for_any_log(dispatchers, f"duplicate ignored message_id={create.id}")
        # Both deliveries are handled: anything the duplicate caused would be on its way.
        later = []
        await send(rider_ws, {"type": "echo.message", "data": "marker"})
        while (frame := await receive(rider_ws))["type"] != "echo.message":
            later.append(frame)
    assert not any(about(trip_id)(frame) for frame in later)
    assert await db.fetchval("SELECT count(*) FROM trips WHERE rider_id = $1", rider.id) == 1
