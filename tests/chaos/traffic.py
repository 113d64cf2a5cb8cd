"""Real clients driving bursts of trips through their whole lifecycle, tolerant of faults.

Each pair is one rider and one driver. The rider requests trips one after another;
the driver accepts each and moves it to COMPLETED. Clients behave as a careful app
would during an outage: sockets reconnect by themselves, and a step that got no
answer is checked over HTTP and sent again only if it did not happen. Every frame
is recorded, so a test can check what each user received, duplicates included.

Each step carries a `request_id`, the same on every resend, as the protocol asks. A
step that got no answer may have been in flight all along: a worker retrying it
until the database is back, or a publish whose confirm was lost with the broker.
Both copies then reach the workers, and the request id makes the later one a
duplicate with no effect. Without it the later copy is a new command: a second trip
for a request, or a step refused as one the trip already took (`invalid_transition`).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import orjson
import websockets
from websockets.asyncio.client import ClientConnection

from tests.clients import SUBPROTOCOLS, Account, create_account, ws_url

log = logging.getLogger(__name__)

LIFECYCLE = [
    ("STARTED", "trip.accepted"),
    ("IN_PROGRESS", "trip.picked_up"),
    ("COMPLETED", "trip.completed"),
]
RIDER_EVENTS = ["trip.requested", *(event for _, event in LIFECYCLE)]
ORDER = ["REQUESTED", "STARTED", "IN_PROGRESS", "COMPLETED"]
# How long a client waits for an answer before it checks over HTTP and tries again.
STEP_PATIENCE_SECONDS = 4.0
TRIP_DEADLINE_SECONDS = 120.0


class LiveSocket:
    """A client socket that reconnects by itself and records every frame it receives.

    It reconnects with `since` (the last notification number it got), to the next of
    its gateways when one is given more than one, as a client of several nodes does.
    """

    def __init__(self, base_url: str | list[str], account: Account) -> None:
        self.base_urls = [base_url] if isinstance(base_url, str) else base_url
        self.account = account
        self.frames: list[dict[str, Any]] = []
        self.reconnects = 0
        self.last_seq: int | None = None
        self.connected_to: list[str] = []
        self._ws: ClientConnection | None = None
        self._changed = asyncio.Condition()
        self._task: asyncio.Task[None] | None = None
        self._connected = asyncio.Event()

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run())
        await asyncio.wait_for(self._connected.wait(), 30)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._ws is not None:
            await self._ws.close()

    async def send(self, frame: dict[str, Any]) -> bool:
        """Send if connected; False if the socket is down (the caller retries later)."""
        ws = self._ws
        if ws is None or not self._connected.is_set():
            return False
        try:
            await ws.send(orjson.dumps(frame).decode())
        except websockets.ConnectionClosed:
            return False
        return True

    async def wait_for(
        self, wanted: Callable[[dict[str, Any]], bool], seconds: float
    ) -> dict[str, Any] | None:
        """The first recorded frame `wanted` accepts, waiting up to `seconds` for it."""

        def find() -> dict[str, Any] | None:
            return next((f for f in self.frames if wanted(f)), None)

        async with self._changed:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait_for(lambda: find() is not None), seconds)
            return find()

    def about(self, trip_id: str) -> list[dict[str, Any]]:
        return [
            f
            for f in self.frames
            if isinstance(f.get("data"), dict) and f["data"].get("id") == trip_id
        ]

    async def _run(self) -> None:
        backoff = 0.2
        gateways = itertools.cycle(self.base_urls)
        base_url = next(gateways)
        while True:
            try:
                url = ws_url(base_url, self.account.access, self.last_seq)
                async with websockets.connect(url, open_timeout=5, subprotocols=SUBPROTOCOLS) as ws:
                    self._ws = ws
                    self.connected_to.append(base_url)
                    self._connected.set()
                    backoff = 0.2
                    async for raw in ws:
                        frame = orjson.loads(raw)
                        async with self._changed:
                            self.frames.append(frame)
                            if "seq" in frame:
                                self.last_seq = frame["seq"]
                            self._changed.notify_all()
            except (OSError, websockets.WebSocketException, TimeoutError) as exc:
                log.debug("socket of user %s down: %r", self.account.id, exc)
                base_url = next(gateways)
            self._connected.clear()
            self._ws = None
            self.reconnects += 1
            await asyncio.sleep(backoff)  # reconnect backoff, as a real client does
            backoff = min(backoff * 2, 2.0)


@dataclass
class Pair:
    index: int
    rider: LiveSocket
    driver: LiveSocket
    trips: dict[str, str] = field(default_factory=dict)  # label -> trip id


@dataclass
class Traffic:
    http: httpx.AsyncClient
    pairs: list[Pair]
    completed: int = 0
    resends: int = 0
    progress: asyncio.Event = field(default_factory=asyncio.Event)

    @classmethod
    async def open(
        cls, http: httpx.AsyncClient, base_url: str | list[str], pairs: int, *, spread: bool = False
    ) -> Traffic:
        """`pairs` riders and drivers, connected. With `spread` (and several gateways),
        pair n's rider starts on gateway n and its driver on gateway n + 1 (modulo
        their number), each falling back to the next: riders and drivers are spread
        over the gateways alike, and every trip crosses gateways."""
        gateways = [base_url] if isinstance(base_url, str) else base_url
        opened = []
        for index in range(pairs):
            rider_urls, driver_urls = (
                (_rotated(gateways, index), _rotated(gateways, index + 1))
                if spread
                else (gateways, gateways)
            )
            rider = LiveSocket(rider_urls, await create_account(http, "rider"))
            driver = LiveSocket(driver_urls, await create_account(http, "driver"))
            await rider.start()
            await driver.start()
            opened.append(Pair(index, rider, driver))
        return cls(http, opened)

    async def close(self) -> None:
        for pair in self.pairs:
            await pair.rider.stop()
            await pair.driver.stop()

    async def run(self, trips_per_pair: int, pause_seconds: float = 0.0) -> None:
        """Every pair goes through `trips_per_pair` trips, one after another, resting
        `pause_seconds` between two (a burst that lasts, at a rate one can tell)."""
        await asyncio.wait_for(
            asyncio.gather(
                *(self._drive(pair, trips_per_pair, pause_seconds) for pair in self.pairs)
            ),
            TRIP_DEADLINE_SECONDS * 3 + trips_per_pair * pause_seconds,
        )

    async def run_until(self, stop: asyncio.Event, pause_seconds: float = 0.0) -> None:
        """Every pair goes through trip after trip, resting `pause_seconds` between two,
        until `stop` is set; each finishes the trip it is on. A burst sized by what must
        happen during it (every node killed, say), not by the clock: on a busy machine
        it lasts longer instead of ending too soon."""
        await asyncio.gather(*(self._drive(pair, None, pause_seconds, stop) for pair in self.pairs))

    async def wait_until_completed(self, count: int) -> None:
        while self.completed < count:
            self.progress.clear()
            await self.progress.wait()

    async def _drive(
        self,
        pair: Pair,
        trips: int | None,
        pause_seconds: float = 0.0,
        stop: asyncio.Event | None = None,
    ) -> None:
        for number in itertools.count() if trips is None else range(trips):
            if number and pause_seconds:
                if stop is None:
                    await asyncio.sleep(pause_seconds)
                else:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), pause_seconds)
            if stop is not None and stop.is_set():
                return
            label = f"pair {pair.index} trip {number}"
            trip_id = await self._request(pair, label, f"pair-{pair.index}-trip-{number}")
            pair.trips[label] = trip_id
            for status, event in LIFECYCLE:
                await self._advance(pair, trip_id, status, event)
            self.completed += 1
            self.progress.set()

    async def _request(self, pair: Pair, label: str, request_id: str) -> str:
        frame = {
            "type": "create.trip",
            "request_id": request_id,
            "data": {"pick_up_address": label, "drop_off_address": "Station"},
        }

        def requested(f: dict[str, Any]) -> bool:
            data = f.get("data")
            return (
                f.get("type") == "trip.requested"
                and isinstance(data, dict)
                and data.get("pick_up_address") == label
            )

        while True:
            if await pair.rider.send(frame):
                seen = await pair.rider.wait_for(requested, STEP_PATIENCE_SECONDS)
                if seen is not None:
                    return str(seen["data"]["id"])
            stored = await self._find_by_label(pair.rider.account, label)
            if stored is not None:
                return stored
            self.resends += 1

    async def _advance(self, pair: Pair, trip_id: str, status: str, event: str) -> None:
        frame = {
            "type": "update.trip",
            "request_id": f"{trip_id}-{status}",
            "data": {"id": trip_id, "status": status},
        }

        def done(f: dict[str, Any]) -> bool:
            return f.get("type") == event and f.get("data", {}).get("id") == trip_id

        while True:
            sent = await pair.driver.send(frame)
            if sent and await pair.driver.wait_for(done, STEP_PATIENCE_SECONDS) is not None:
                return
            current = await self._status(pair.driver.account, trip_id)
            if current is not None and ORDER.index(current) >= ORDER.index(status):
                return  # it happened; the notification may still be on its way
            self.resends += 1

    async def _find_by_label(self, rider: Account, label: str) -> str | None:
        response = await self._get("/api/trip/", rider)
        if response is None:
            return None
        return next((t["id"] for t in response.json() if t["pick_up_address"] == label), None)

    async def _status(self, account: Account, trip_id: str) -> str | None:
        response = await self._get(f"/api/trip/{trip_id}/", account)
        return str(response.json()["status"]) if response is not None else None

    async def _get(self, path: str, account: Account) -> httpx.Response | None:
        try:
            response = await self.http.get(
                path, headers={"Authorization": f"Bearer {account.access}"}
            )
        except httpx.TransportError:
            return None
        return response if response.status_code == 200 else None


def _rotated(items: list[str], by: int) -> list[str]:
    by %= len(items)
    return items[by:] + items[:by]


@dataclass
class Delivery:
    """What riders received: per trip and event type, how many frames (duplicates count)."""

    received: dict[tuple[str, str], int]
    missing: list[tuple[str, str]]
    duplicates: int
    errors: list[dict[str, Any]]


async def rider_deliveries(traffic: Traffic, wait_seconds: float = 30) -> Delivery:
    """Wait (up to a deadline) until every rider has every event of every trip; count them."""
    received: dict[tuple[str, str], int] = defaultdict(int)
    missing: list[tuple[str, str]] = []
    duplicates = 0
    deadline = asyncio.get_running_loop().time() + wait_seconds
    for pair in traffic.pairs:
        for trip_id in pair.trips.values():
            for event in RIDER_EVENTS:
                remaining = max(0.1, deadline - asyncio.get_running_loop().time())
                found = await pair.rider.wait_for(
                    lambda f, e=event, t=trip_id: f.get("type") == e and f["data"].get("id") == t,
                    remaining,
                )
                if found is None:
                    missing.append((trip_id, event))
            frames = pair.rider.about(trip_id)
            for frame in frames:
                received[(trip_id, frame["type"])] += 1
            duplicates += len(frames) - len({f["event_id"] for f in frames})
    errors = [
        f
        for pair in traffic.pairs
        for s in (pair.rider, pair.driver)
        for f in s.frames
        if f.get("type") == "error"
    ]
    return Delivery(dict(received), missing, duplicates, errors)
