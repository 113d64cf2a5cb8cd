"""Every socket of a user sees every notification, once and in order, on one gateway or
two; a client resumes exactly with `since`; retries with a `request_id` take effect
once; and bad `since` or `request_id` values get a clear answer."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
import websockets
from websockets.asyncio.client import ClientConnection

from shared.commands import command_id
from shared.settings import Settings
from tests.clients import (
    SUBPROTOCOLS,
    about,
    connect,
    create_account,
    is_error,
    receive,
    receive_until,
    send,
    ws_url,
)
from tools.processes import ServiceProcess, start_gateway

LIFECYCLE = [
    ("STARTED", "trip.accepted"),
    ("IN_PROGRESS", "trip.picked_up"),
    ("COMPLETED", "trip.completed"),
]
RIDER_EVENTS = ["trip.requested", *(event for _, event in LIFECYCLE)]


@pytest.fixture(scope="module")
def second_gateway(
    settings: Settings, log_dir: Path, dispatchers: list[ServiceProcess]
) -> Iterator[str]:
    """Another gateway on the same broker and database, as a second node would run."""
    process, url = start_gateway(settings, log_dir)
    yield url
    process.stop()


class Recorder:
    """A socket whose every frame is kept, read in the background."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.frames: list[dict[str, Any]] = []
        self.arrived = asyncio.Event()
        self._task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        while True:
            self.frames.append(await receive(self.ws, wait_seconds=3600))
            self.arrived.set()

    async def wait_for(self, count: int, seconds: float = 60) -> None:
        """Until `count` frames with a `seq` arrived."""
        async with asyncio.timeout(seconds):
            while len(self.numbered()) < count:
                self.arrived.clear()
                await self.arrived.wait()

    async def first(
        self, wanted: Callable[[dict[str, Any]], bool], seconds: float = 30
    ) -> dict[str, Any]:
        async with asyncio.timeout(seconds):
            while (found := next((f for f in self.frames if wanted(f)), None)) is None:
                self.arrived.clear()
                await self.arrived.wait()
        return found

    def numbered(self) -> list[dict[str, Any]]:
        return [f for f in self.frames if "seq" in f]

    async def close(self) -> None:
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)
        await self.ws.close()


async def drive_trip(
    rider: ClientConnection | Recorder, driver_ws: ClientConnection, label: str
) -> str:
    """One whole trip: requested by the rider, then moved along by the driver."""
    rider_ws = rider.ws if isinstance(rider, Recorder) else rider
    await send(
        rider_ws,
        {"type": "create.trip", "data": {"pick_up_address": label, "drop_off_address": "B"}},
    )

    def requested_here(frame: dict[str, Any]) -> bool:
        return frame["type"] == "trip.requested" and frame["data"]["pick_up_address"] == label

    if isinstance(rider, Recorder):
        requested = await rider.first(requested_here)
    else:
        requested = await receive_until(rider_ws, requested_here)
    trip_id = str(requested["data"]["id"])
    for status, event in LIFECYCLE:
        await send(driver_ws, {"type": "update.trip", "data": {"id": trip_id, "status": status}})
        await receive_until(driver_ws, about(trip_id, event))
    return trip_id


def consecutive(frames: list[dict[str, Any]], after: int = 0) -> bool:
    return [f["seq"] for f in frames] == list(range(after + 1, after + 1 + len(frames)))


async def test_three_sockets_on_two_gateways_each_get_the_whole_lifecycle_of_50_trips(
    http: httpx.AsyncClient, base_url: str, second_gateway: str
) -> None:
    rider = await create_account(http, "rider")
    driver = await create_account(http, "driver")
    sockets = [
        Recorder(await connect(url, rider.access)) for url in (base_url, base_url, second_gateway)
    ]
    try:
        async with await connect(second_gateway, driver.access) as driver_ws:
            trip_ids = [
                await drive_trip(sockets[0], driver_ws, f"trip {n} {uuid.uuid4().hex[:6]}")
                for n in range(50)
            ]
        for socket in sockets:
            await socket.wait_for(50 * len(RIDER_EVENTS))
    finally:
        for socket in sockets:
            await socket.close()

    expected = [(trip_id, event) for trip_id in trip_ids for event in RIDER_EVENTS]
    for socket in sockets:
        frames = socket.numbered()
        assert consecutive(frames), [f["seq"] for f in frames]
        assert [(f["data"]["id"], f["type"]) for f in frames] == expected


async def test_a_rider_away_for_a_whole_trip_resumes_with_exactly_what_was_missed(
    http: httpx.AsyncClient, base_url: str, second_gateway: str, db: asyncpg.Connection
) -> None:
    rider = await create_account(http, "rider")
    driver = await create_account(http, "driver")
    async with await connect(second_gateway, driver.access) as driver_ws:
        async with await connect(base_url, rider.access) as rider_ws:
            await send(
                rider_ws,
                {"type": "create.trip", "data": {"pick_up_address": "A", "drop_off_address": "B"}},
            )
            requested = await receive_until(rider_ws, lambda f: f["type"] == "trip.requested")
        trip_id, since = requested["data"]["id"], requested["seq"]
        for status, event in LIFECYCLE:
            await send(
                driver_ws, {"type": "update.trip", "data": {"id": trip_id, "status": status}}
            )
            await receive_until(driver_ws, about(trip_id, event))

        # Back, on the other gateway: what was missed, in order, then live at the seam.
        async with await connect(second_gateway, rider.access, since=since) as rider_ws:
            missed = [await receive(rider_ws) for _ in LIFECYCLE]
            assert [f["type"] for f in missed] == [event for _, event in LIFECYCLE]
            assert consecutive(missed, after=since)
            await send(
                rider_ws,
                {"type": "create.trip", "data": {"pick_up_address": "C", "drop_off_address": "D"}},
            )
            live = await receive(rider_ws)
            assert (live["type"], live["seq"]) == ("trip.requested", since + len(LIFECYCLE) + 1)
            last_seen = live["seq"]

    # A second absence, past retention: the pruner took what came after `since`.
    await db.execute("DELETE FROM notifications WHERE user_id = $1", rider.id)
    await db.execute(
        "INSERT INTO notifications (user_id, seq, frame_type, body) VALUES ($1, $2, 'x', '{}')",
        rider.id,
        last_seen + 5,
    )
    await db.execute("UPDATE users SET last_seq = $2 WHERE id = $1", rider.id, last_seen + 5)
    async with await connect(base_url, rider.access, since=last_seen) as rider_ws:
        first = await receive(rider_ws)
    assert first == {"type": "resync", "data": {"oldest_seq": last_seen + 5}}


async def test_without_since_a_socket_gets_what_the_user_missed_since_their_last_socket(
    http: httpx.AsyncClient, base_url: str
) -> None:
    rider = await create_account(http, "rider")
    driver = await create_account(http, "driver")
    async with await connect(base_url, driver.access) as driver_ws:
        async with await connect(base_url, rider.access) as rider_ws:
            await send(
                rider_ws,
                {"type": "create.trip", "data": {"pick_up_address": "A", "drop_off_address": "B"}},
            )
            requested = await receive_until(rider_ws, lambda f: f["type"] == "trip.requested")
        trip_id = requested["data"]["id"]
        await send(driver_ws, {"type": "update.trip", "data": {"id": trip_id, "status": "STARTED"}})
        await receive_until(driver_ws, about(trip_id, "trip.accepted"))
        # The course's client never says `since`; it still gets the accept it missed.
        async with await connect(base_url, rider.access) as rider_ws:
            accepted = await receive_until(rider_ws, lambda f: "seq" in f)
    assert (accepted["type"], accepted["seq"]) == ("trip.accepted", requested["seq"] + 1)


async def test_200_retries_with_one_request_id_make_exactly_one_trip(
    http: httpx.AsyncClient,
    base_url: str,
    db: asyncpg.Connection,
    dispatchers: list[ServiceProcess],
) -> None:
    rider = await create_account(http, "rider")
    frame = {
        "type": "create.trip",
        "request_id": "ride-home-1",
        "data": {"pick_up_address": "A", "drop_off_address": "B"},
    }
    async with await connect(base_url, rider.access) as ws:
        for _ in range(200):
            await send(ws, frame)
        requested = await receive_until(ws, lambda f: f["type"] == "trip.requested")
        # Every copy reached a worker, which recognised it.
        command = command_id(rider.id, "ride-home-1")
        await asyncio.to_thread(
            wait_for_log_count, dispatchers, f"duplicate ignored message_id={command}", 199
        )
        await send(ws, {"type": "echo.message", "data": "last"})
        rest = []
        while (frame_in := await receive(ws))["type"] != "echo.message":
            rest.append(frame_in)
    assert rest == [], "a retry had an effect the client could see"
    trips = await db.fetch("SELECT id FROM trips WHERE rider_id = $1", rider.id)
    assert [str(row["id"]) for row in trips] == [requested["data"]["id"]]


def wait_for_log_count(processes: list[ServiceProcess], text: str, count: int) -> None:
    until = time.monotonic() + 60
    while sum(p.log().count(text) for p in processes) < count:
        assert time.monotonic() < until, f"fewer than {count} lines of {text!r}"
        time.sleep(0.1)


async def test_a_refused_frame_echoes_its_request_id_and_trip(
    http: httpx.AsyncClient, base_url: str
) -> None:
    driver = await create_account(http, "driver")
    missing_trip = str(uuid.uuid4())
    async with await connect(base_url, driver.access) as ws:
        await send(
            ws,
            {
                "type": "update.trip",
                "request_id": "accept-7",
                "data": {"id": missing_trip, "status": "STARTED"},
            },
        )
        refused = await receive_until(ws, is_error)
        await send(ws, {"type": "update.trip", "request_id": "bad-8", "data": {"id": "x"}})
        invalid = await receive_until(ws, is_error)
    assert refused["data"]["request_id"] == "accept-7"
    assert refused["data"]["trip_id"] == missing_trip
    assert refused["data"]["code"] == "not_found"
    assert "seq" not in refused  # a worker's refusal is a reply, not a notification
    assert invalid["data"]["request_id"] == "bad-8"
    assert invalid["data"]["code"] == "invalid_data"
    assert "seq" not in invalid  # the gateway's own reply is not


@pytest.mark.parametrize("since", ["-1", "abc", "1.5", "", "99999999999999999999", "%00"])
async def test_a_bad_since_is_refused_before_the_upgrade(
    http: httpx.AsyncClient, base_url: str, since: str
) -> None:
    rider = await create_account(http, "rider")
    url = ws_url(base_url, rider.access) + f"&since={since}"
    with pytest.raises(websockets.InvalidStatus) as refused:
        await websockets.connect(url, open_timeout=10, subprotocols=SUBPROTOCOLS)
    response = refused.value.response
    assert response.status_code == 400
    assert b"since" in response.body


async def test_a_since_ahead_of_the_users_notifications_is_refused(
    http: httpx.AsyncClient, base_url: str
) -> None:
    rider = await create_account(http, "rider")
    with pytest.raises(websockets.InvalidStatus) as refused:
        await connect(base_url, rider.access, since=5)
    assert refused.value.response.status_code == 400
    assert b"ahead of your latest notification (0)" in refused.value.response.body
    # Nothing was lost: a plain connection works.
    async with await connect(base_url, rider.access, since=0) as ws:
        await send(ws, {"type": "echo.message", "data": "fine"})
        assert (await receive(ws))["data"] == "fine"


@pytest.mark.parametrize("request_id", ["", "x" * 65, "two words", 12, ["a"]])
async def test_a_bad_request_id_gets_an_error_frame_and_the_socket_stays(
    http: httpx.AsyncClient, base_url: str, request_id: Any
) -> None:
    rider = await create_account(http, "rider")
    async with await connect(base_url, rider.access) as ws:
        await send(
            ws,
            {
                "type": "create.trip",
                "request_id": request_id,
                "data": {"pick_up_address": "A", "drop_off_address": "B"},
            },
        )
        error = await receive(ws)
        await send(ws, {"type": "echo.message", "data": "still here"})
        echoed = await receive(ws)
    assert error["data"]["code"] == "invalid_frame"
    assert "request_id" in error["data"]["message"]
    assert echoed["data"] == "still here"


async def test_a_second_request_during_a_live_trip_is_refused_with_trip_in_progress(
    http: httpx.AsyncClient, base_url: str
) -> None:
    rider = await create_account(http, "rider")
    request = {"type": "create.trip", "data": {"pick_up_address": "A", "drop_off_address": "B"}}
    async with await connect(base_url, rider.access) as ws:
        await send(ws, request)
        await receive_until(ws, lambda f: f["type"] == "trip.requested")
        await send(ws, {**request, "request_id": "second"})
        refused = await receive_until(ws, is_error)
    assert refused["data"]["code"] == "trip_in_progress"
    assert refused["data"]["request_id"] == "second"


async def test_a_socket_reset_mid_write_loses_nothing_on_resume(
    http: httpx.AsyncClient, base_url: str
) -> None:
    rider = await create_account(http, "rider")
    driver = await create_account(http, "driver")
    async with (
        await connect(base_url, driver.access) as driver_ws,
        await connect(base_url, rider.access) as phone,
    ):
        victim = await connect(base_url, rider.access)
        got: list[dict[str, Any]] = []
        trips = asyncio.create_task(
            drive_trips(phone, driver_ws, [f"reset {n} {uuid.uuid4().hex[:6]}" for n in range(5)])
        )
        got.append(await receive(victim))
        got.append(await receive(victim))
        victim.transport.abort()  # the connection drops with more frames on their way
        trip_ids = await trips
        last = got[-1]["seq"]
        expected = [(trip_id, event) for trip_id in trip_ids for event in RIDER_EVENTS]
        async with await connect(base_url, rider.access, since=last) as resumed:
            rest = [await receive(resumed) for _ in range(len(expected) - len(got))]
    frames = got + rest
    assert consecutive(frames)
    assert [(f["data"]["id"], f["type"]) for f in frames] == expected


async def drive_trips(
    rider_ws: ClientConnection, driver_ws: ClientConnection, labels: list[str]
) -> list[str]:
    return [await drive_trip(rider_ws, driver_ws, label) for label in labels]


async def test_without_since_what_a_connection_that_reset_was_sent_comes_again(
    http: httpx.AsyncClient, base_url: str
) -> None:
    """PROTOCOL D1: a socket without `since` never loses a notification. A connection
    that drops with no close frame may not have been read to its end, so the next
    socket is sent again what it was sent (a repeat is allowed; a loss is not)."""
    rider = await create_account(http, "rider")
    driver = await create_account(http, "driver")
    async with await connect(base_url, driver.access) as driver_ws:
        victim = await connect(base_url, rider.access)
        await send(
            victim,
            {"type": "create.trip", "data": {"pick_up_address": "A", "drop_off_address": "B"}},
        )
        requested = await receive_until(victim, lambda f: f["type"] == "trip.requested")
        trip_id = requested["data"]["id"]
        await send(driver_ws, {"type": "update.trip", "data": {"id": trip_id, "status": "STARTED"}})
        await receive_until(driver_ws, about(trip_id, "trip.accepted"))
        # The accept was written into the rider's connection; whether its app read it,
        # the gateway cannot know when the connection then resets.
        await receive_until(victim, about(trip_id, "trip.accepted"))
        victim.transport.abort()
    async with await connect(base_url, rider.access) as again:
        accepted = await receive_until(again, about(trip_id, "trip.accepted"))
    assert accepted["seq"] == requested["seq"] + 1
