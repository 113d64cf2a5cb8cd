"""Faults on the way from a commit to the sockets: a notice relayed late, a request that
falls due while no worker runs, and a driver who stops reading among a hundred."""

from __future__ import annotations

import asyncio
import signal
import socket
import time
import uuid
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import websockets
from websockets.asyncio.client import ClientConnection

from dispatcher import notification_log, repository
from dispatcher.handlers import update_trip
from dispatcher.notifications import Audience, Broadcast, for_transition
from shared.commands import UPDATE_TRIP, Command, UpdateTrip
from shared.settings import Settings
from shared.topology import Topology
from shared.trips import Status
from tests.clients import (
    SUBPROTOCOLS,
    Account,
    about,
    connect,
    create_account,
    receive,
    receive_until,
    send,
    ws_url,
)
from tools.processes import ServiceProcess, start_dispatcher, start_gateway

REQUEST = {"type": "create.trip", "data": {"pick_up_address": "A", "drop_off_address": "B"}}


async def commit_without_publishing(
    settings: Settings, driver: Account, trip_id: str, status: Status
) -> list[int]:
    """What a worker killed between its commit and its publish leaves: the change and its
    notifications committed (numbered, logged and in the outbox), nothing published.
    Returns the outbox rows, which the workers' relays publish late."""
    command = Command(
        uuid.uuid4(), UPDATE_TRIP, driver.id, UpdateTrip(uuid.UUID(trip_id), status), time.time()
    )
    conn = await asyncpg.connect(settings.database_url)
    try:
        async with conn.transaction():
            now = datetime.now(UTC)
            admission = await repository.admit(conn, command)
            assert admission.earlier is None
            transition = await update_trip(conn, command, admission.sender, now)
            # Trips here have no pick-up point: their offers went to every free driver.
            withdrawn = Audience(broadcast=Broadcast.EVERYONE)
            exchange = Topology(settings.broker_prefix).notifications_exchange
            recorded = await notification_log.record(
                conn,
                for_transition(transition, withdrawn, settings.offer_ttl_seconds),
                now,
                exchange=exchange,
            )
            return recorded.outbox_ids
    finally:
        await conn.close()


async def test_a_pause_relayed_late_never_leaves_a_driver_paused_or_a_trip_rolled_back(
    http: httpx.AsyncClient,
    base_url: str,
    db: asyncpg.Connection,
    settings: Settings,
    dispatchers: list[ServiceProcess],
) -> None:
    rider = await create_account(http, "rider")
    driver = await create_account(http, "driver")
    async with (
        await connect(base_url, rider.access) as rider_ws,
        await connect(base_url, driver.access) as driver_ws,
    ):
        await send(rider_ws, REQUEST)
        trip_id = (await receive_until(rider_ws, lambda f: f["type"] == "trip.requested"))["data"][
            "id"
        ]
        await receive_until(driver_ws, about(trip_id, "trip.requested"))
        # The accept (which pauses the driver's offers) commits, and its worker dies.
        late_rows = await commit_without_publishing(settings, driver, trip_id, Status.STARTED)
        # The trip goes on meanwhile through the live workers, published at once.
        for status, event in (("IN_PROGRESS", "trip.picked_up"), ("COMPLETED", "trip.completed")):
            await send(
                driver_ws, {"type": "update.trip", "data": {"id": trip_id, "status": status}}
            )
            await receive_until(driver_ws, about(trip_id, event))
        # Now the relay publishes the accept, seconds late.
        await wait_until_published(db, late_rows)

        # The driver is free: a new request reaches them as an offer.
        other_rider = await create_account(http, "rider")
        async with await connect(base_url, other_rider.access) as other_ws:
            await send(other_ws, REQUEST)
            offered = await receive_until(other_ws, lambda f: f["type"] == "trip.requested")
            await receive_until(driver_ws, about(offered["data"]["id"], "trip.requested"))
        await send(rider_ws, {"type": "echo.message", "data": "end"})
        rider_frames = await frames_until_echo(rider_ws)

    # Each side applied the trip's changes once, in order, the late notice in its place.
    about_trip = [f for f in rider_frames if "seq" in f and f["data"]["id"] == trip_id]
    assert [f["type"] for f in about_trip] == ["trip.accepted", "trip.picked_up", "trip.completed"]
    assert [f["data"]["version"] for f in about_trip] == [2, 3, 4]


async def wait_until_published(db: asyncpg.Connection, outbox_ids: list[int]) -> None:
    deadline = time.monotonic() + 60
    while await db.fetchval("SELECT count(*) FROM outbox WHERE id = ANY($1)", outbox_ids):
        assert time.monotonic() < deadline, "the relay never published the late rows"
        await asyncio.sleep(0.2)


async def frames_until_echo(ws: ClientConnection) -> list[dict[str, Any]]:
    frames = []
    while (frame := await receive(ws))["type"] != "echo.message":
        frames.append(frame)
    return frames


async def test_a_request_due_while_no_worker_ran_is_cancelled_by_the_next_worker(
    isolated_settings: Settings, tmp_path: Path, db: asyncpg.Connection
) -> None:
    quick = replace(isolated_settings, request_timeout_seconds=2)
    gateway, base_url = start_gateway(quick, tmp_path)
    first = start_dispatcher(quick, tmp_path / "first.log")
    try:
        async with httpx.AsyncClient(base_url=base_url, timeout=10) as http:
            rider = await create_account(http, "rider")
            driver = await create_account(http, "driver")
        async with (
            await connect(base_url, rider.access) as rider_ws,
            await connect(base_url, driver.access) as driver_ws,
        ):
            await send(rider_ws, REQUEST)
            requested = await receive_until(rider_ws, lambda f: f["type"] == "trip.requested")
            trip_id = requested["data"]["id"]
            first.signal(signal.SIGTERM)
            assert first.wait(30) == 0
            # Every worker is down while the request falls due.
            await wait_until_due(db, trip_id, quick.request_timeout_seconds)
            assert (
                await db.fetchval("SELECT status FROM trips WHERE id = $1", uuid.UUID(trip_id))
                == "REQUESTED"
            )
            second = start_dispatcher(quick, tmp_path / "second.log")
            try:
                cancelled = await receive_until(rider_ws, about(trip_id, "trip.cancelled"), 30)
                withdrawn = await receive_until(driver_ws, about(trip_id, "trip.cancelled"), 30)
            finally:
                second.stop()
    finally:
        first.stop()
        gateway.stop()
    assert cancelled["data"]["status"] == "CANCELLED"
    assert cancelled["data"]["cancel_reason"] == "no_driver"
    assert cancelled["seq"] == requested["seq"] + 1
    assert withdrawn["data"]["cancel_reason"] == "no_driver"


async def wait_until_due(db: asyncpg.Connection, trip_id: str, timeout_seconds: int) -> None:
    """The request's age passing its timeout is the condition under test: wait for it."""
    deadline = time.monotonic() + 60
    while not await db.fetchval(
        "SELECT created < now() - make_interval(secs => $2) FROM trips WHERE id = $1",
        uuid.UUID(trip_id),
        timeout_seconds,
    ):
        assert time.monotonic() < deadline
        await asyncio.sleep(0.2)


DRIVERS = 100
# The gateway gives up on a socket whose data has not drained for this long (the
# default); until then every write to the stalled driver is stuck.
STALL_SECONDS = 10
# Rounds (an offer and its withdrawal to every driver) the 99 others must get while it
# is stuck: a gateway whose fan-out waited on the stalled socket would manage none.
ROUNDS_WHILE_STALLED = 3
# 60 KB echoes that a stalled driver asks for: more than the kernel's socket buffers hold.
STALL_BACKLOG_FRAMES = 150


async def test_a_driver_who_stops_reading_does_not_slow_the_offers_of_99_others(
    isolated_settings: Settings, tmp_path: Path
) -> None:
    """While one driver's socket is stuck (it stopped reading with a backlog), the 99
    others get every offer, round after round, before the gateway gives up on it.
    Counted in rounds, not timed: it holds however busy the machine is."""
    stalled_settings = replace(isolated_settings, slow_client_seconds=STALL_SECONDS)
    gateway, base_url = start_gateway(stalled_settings, tmp_path)
    worker = start_dispatcher(isolated_settings, tmp_path / "worker.log")
    try:
        async with httpx.AsyncClient(base_url=base_url, timeout=30) as http:
            rider = await create_account(http, "rider")
            drivers = [await create_account(http, "driver") for _ in range(DRIVERS)]
        listeners = [await OfferListener.open(base_url, d) for d in drivers[1:]]
        stalled = await open_stalled(base_url, drivers[0])
        gave_up = f"socket closed for reading too slowly user_id={drivers[0].id}"
        rounds_while_stalled = 0
        try:
            async with await connect(base_url, rider.access) as rider_ws:
                await offer_latencies(rider_ws, listeners, 1)
                await stop_reading(stalled)
                # Every listener gets each round's offer (offer_latencies waits for all
                # 99); count the rounds done before the gateway closed the stuck socket.
                while gave_up not in gateway.log():
                    await offer_latencies(rider_ws, listeners, 1)
                    rounds_while_stalled += gave_up not in gateway.log()
        finally:
            for listener in listeners:
                await listener.close()
            stalled.transport.abort()
    finally:
        worker.stop()
        gateway.stop()
    print(f"\n{rounds_while_stalled} rounds of offers reached 99 drivers while one was stuck")
    assert rounds_while_stalled >= ROUNDS_WHILE_STALLED, (
        f"only {rounds_while_stalled} rounds reached the others while one driver was stuck"
    )


async def stop_reading(ws: ClientConnection) -> None:
    """The driver's app stops reading, with a backlog: echoes of large frames fill the
    socket's kernel buffers, so the gateway's writes to it block from here on."""
    ws.transport.pause_reading()
    filler = {"type": "echo.message", "data": "x" * 60_000}
    for _ in range(STALL_BACKLOG_FRAMES):
        await send(ws, filler)


async def open_stalled(base_url: str, driver: Account) -> ClientConnection:
    """A driver socket with a small receive buffer, so that once it stops reading the
    gateway's writes to it block soon."""
    raw = socket.socket()
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    host, port = base_url.removeprefix("http://").split(":")
    raw.connect((host, int(port)))
    raw.setblocking(False)
    return await websockets.connect(
        ws_url(base_url, driver.access), sock=raw, open_timeout=10, subprotocols=SUBPROTOCOLS
    )


class OfferListener:
    """A driver's socket noting when each offer arrived."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.arrivals: dict[str, float] = {}
        self.arrived = asyncio.Event()
        self._task = asyncio.create_task(self._listen())

    @classmethod
    async def open(cls, base_url: str, driver: Account) -> OfferListener:
        return cls(await connect(base_url, driver.access))

    async def _listen(self) -> None:
        while True:
            frame = await receive(self.ws, wait_seconds=3600)
            if frame["type"] == "trip.requested":
                self.arrivals[frame["data"]["id"]] = time.perf_counter()
                self.arrived.set()

    async def wait_for(self, trip_id: str) -> float:
        async with asyncio.timeout(30):
            while trip_id not in self.arrivals:
                self.arrived.clear()
                await self.arrived.wait()
        return self.arrivals[trip_id]

    async def close(self) -> None:
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)
        await self.ws.close()


async def offer_latencies(
    rider_ws: ClientConnection, listeners: list[OfferListener], rounds: int
) -> list[float]:
    """Milliseconds from each request to its offer reaching each listening driver."""
    latencies = []
    for _ in range(rounds):
        sent = time.perf_counter()
        await send(rider_ws, REQUEST)
        trip = (await receive_until(rider_ws, lambda f: f["type"] == "trip.requested"))["data"]
        for listener in listeners:
            latencies.append((await listener.wait_for(trip["id"]) - sent) * 1000)
        await send(
            rider_ws, {"type": "update.trip", "data": {"id": trip["id"], "status": "CANCELLED"}}
        )
        await receive_until(rider_ws, about(trip["id"], "trip.cancelled"))
    return latencies
