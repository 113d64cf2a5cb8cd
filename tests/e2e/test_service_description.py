"""The live system keeps to its own descriptions (PROTOCOL C4), against a real gateway
and real dispatcher workers.

- The gateway serves both documents and the page to read.
- Real HTTP answers, errors included, fit the OpenAPI document; real frames, of a
  whole trip and its refusals, fit the AsyncAPI document (closed to fields they do
  not name: tests/unit/test_service_description.py has the checks).
- schemathesis, fed the served OpenAPI document, sends each endpoint valid and
  invalid requests (a bounded number) as a logged-in user, and checks every answer
  against the document: no 5xx, only described statuses, bodies and headers.
"""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import websockets
from websockets.asyncio.client import ClientConnection

from gateway.web import description
from tests.clients import (
    PASSWORD,
    SUBPROTOCOLS,
    Account,
    connect,
    create_account,
    new_username,
    receive,
    send,
    ws_url,
)
from tests.unit.test_service_description import frame_errors, response_errors, schema_errors

# Somewhere no other test puts its drivers: the South Pacific.
PICK_UP = {"lat": -47.5 + uuid.uuid4().int % 1000 / 10_000, "lng": -125.0}
# The gateway acts on one location a second per driver.
REPORT_GAP_SECONDS = 1.1
# schemathesis: examples per operation and phase; the whole run stays within a minute.
MAX_EXAMPLES = 50


def bearer(account: Account) -> dict[str, str]:
    return {"Authorization": f"Bearer {account.access}"}


def json_or_none(response: httpx.Response) -> Any:
    return response.json() if response.content else None


def assert_described(
    response: httpx.Response, path: str, expected_status: int | None = None
) -> None:
    """The answer's status is `expected_status` and the document describes it as it came."""
    if expected_status is not None:
        assert response.status_code == expected_status, response.text
    content_type = response.headers.get("content-type", "application/json").split(";")[0]
    errors = response_errors(
        path,
        response.request.method,
        response.status_code,
        json_or_none(response) if content_type == "application/json" else response.text,
        content_type,
    )
    assert errors == [], (response.request.method, path, response.status_code, response.text)


# --- the documents, served ----------------------------------------------------------------


async def test_the_gateway_serves_its_descriptions(http: httpx.AsyncClient) -> None:
    openapi = await http.get("/api/openapi.json")
    asyncapi = await http.get("/api/asyncapi.json")
    page = await http.get("/api/")

    assert openapi.json() == description.openapi()
    assert asyncapi.json() == description.asyncapi()
    assert page.headers["content-type"].startswith("text/html")
    for response, path in ((openapi, "/api/openapi.json"), (asyncapi, "/api/asyncapi.json")):
        assert_described(response, path, 200)
    assert_described(page, "/api/", 200)


# --- real HTTP answers ----------------------------------------------------------------------


async def test_every_answer_of_the_accounts_api_is_described(http: httpx.AsyncClient) -> None:
    username = new_username("rider")
    form = {
        "username": username,
        "first_name": "Ann",
        "last_name": "Rider",
        "password1": PASSWORD,
        "password2": PASSWORD,
        "group": "rider",
    }
    signed_up = await http.post("/api/sign_up/", data=form)
    assert_described(signed_up, "/api/sign_up/", 201)
    assert_described(await http.post("/api/sign_up/", data=form), "/api/sign_up/", 400)
    mismatched = await http.post(
        "/api/sign_up/", json={**form, "username": new_username("rider"), "password2": "x"}
    )
    assert_described(mismatched, "/api/sign_up/", 400)
    assert "password2" in mismatched.json()["fields"]
    not_a_form = await http.post(
        "/api/sign_up/", content=b"a,b", headers={"content-type": "text/csv"}
    )
    assert_described(not_a_form, "/api/sign_up/", 415)

    logged_in = await http.post("/api/log_in/", json={"username": username, "password": PASSWORD})
    assert_described(logged_in, "/api/log_in/", 200)
    tokens = logged_in.json()
    wrong = await http.post("/api/log_in/", json={"username": username, "password": "wrong-one"})
    assert_described(wrong, "/api/log_in/", 401)
    assert_described(await http.post("/api/log_in/", json={}), "/api/log_in/", 400)
    not_json = await http.post(
        "/api/log_in/", content=b"{", headers={"content-type": "application/json"}
    )
    assert_described(not_json, "/api/log_in/", 400)
    too_large = await http.post("/api/log_in/", json={"username": "x" * 70_000, "password": "p"})
    assert_described(too_large, "/api/log_in/", 413)

    async def chunks() -> AsyncIterator[bytes]:
        yield b'{"username": "'
        for _ in range(80):
            yield b"x" * 1024
        yield b'", "password": "p"}'

    # No Content-Length: the cap holds as the body streams in.
    chunked = await http.post(
        "/api/log_in/", content=chunks(), headers={"content-type": "application/json"}
    )
    assert_described(chunked, "/api/log_in/", 413)

    refreshed = await http.post("/api/token/refresh/", json={"refresh": tokens["refresh"]})
    assert_described(refreshed, "/api/token/refresh/", 200)
    refresh = refreshed.json().get("refresh", tokens["refresh"])
    for bad in (tokens["access"], "not.a.token"):
        refused = await http.post("/api/token/refresh/", json={"refresh": bad})
        assert_described(refused, "/api/token/refresh/", 401)

    access = {"Authorization": f"Bearer {tokens['access']}"}
    no_refresh = await http.post("/api/log_out/", json={}, headers=access)
    assert_described(no_refresh, "/api/log_out/", 400)
    forged = await http.post("/api/log_out/", json={"refresh": "not-a-token"})
    assert_described(forged, "/api/log_out/", 401)
    logged_out = await http.post("/api/log_out/", json={"refresh": refresh}, headers=access)
    assert_described(logged_out, "/api/log_out/", 204)


async def test_answers_to_no_such_path_or_method_are_described_errors(
    http: httpx.AsyncClient,
) -> None:
    missing = await http.get("/api/no-such-thing/")
    wrong_method = await http.delete("/api/trip/")

    assert missing.status_code == 404
    assert schema_errors("Error", missing.json()) == []
    assert missing.json()["code"] == "not_found"
    assert wrong_method.status_code == 405
    assert schema_errors("Error", wrong_method.json()) == []
    assert wrong_method.json()["code"] == "method_not_allowed"
    assert "GET" in wrong_method.headers["allow"]


async def test_every_answer_of_the_service_endpoints_is_described(
    http: httpx.AsyncClient,
) -> None:
    for path in ("/api/client-config/", "/healthz", "/readyz"):
        assert_described(await http.get(path), path, 200)


# --- real frames, and the trips they leave --------------------------------------------------


class Recorded:
    """A socket that keeps every frame it receives."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.frames: list[dict[str, Any]] = []
        self._reported = 0.0

    async def send(self, frame: dict[str, Any]) -> None:
        await send(self.ws, frame)

    async def until(
        self, wanted: Callable[[dict[str, Any]], bool], wait_seconds: float = 10
    ) -> dict[str, Any]:
        async with asyncio.timeout(wait_seconds):
            while True:
                frame = await receive(self.ws)
                self.frames.append(frame)
                if wanted(frame):
                    return frame

    async def settle(self) -> None:
        """Receive until the echo of a marker sent now: the gateway handles a socket's
        frames in order, so whatever it sent for the frames before has arrived."""
        marker = f"marker-{time.monotonic_ns()}"
        await self.send({"type": "echo.message", "data": marker})
        await self.until(lambda frame: frame.get("data") == marker)

    async def report(self, where: dict[str, float]) -> None:
        wait = self._reported + REPORT_GAP_SECONDS - time.monotonic()
        if wait > 0:
            await asyncio.sleep(wait)
        await self.send({"type": "update.location", "data": {**where, "heading": 180.0}})
        self._reported = time.monotonic()
        await self.settle()


def of(frame_type: str, trip_id: str | None = None) -> Callable[[dict[str, Any]], bool]:
    def matches(frame: dict[str, Any]) -> bool:
        data = frame.get("data")
        trip = isinstance(data, dict) and (trip_id is None or data.get("id") == trip_id)
        return frame.get("type") == frame_type and bool(trip)

    return matches


@asynccontextmanager
async def recorded(base_url: str, *accounts: Account) -> AsyncIterator[list[Recorded]]:
    async with AsyncExitStack() as stack:
        yield [
            Recorded(await stack.enter_async_context(await connect(base_url, account.access)))
            for account in accounts
        ]


@pytest.mark.usefixtures("dispatchers")
async def test_every_frame_of_real_trips_is_described(
    http: httpx.AsyncClient, base_url: str
) -> None:
    rider = await create_account(http, "rider")
    dan, eve = [await create_account(http, "driver") for _ in range(2)]
    near = {"lat": PICK_UP["lat"] + 0.001, "lng": PICK_UP["lng"]}
    async with recorded(base_url, rider, dan, eve) as (ann_ws, dan_ws, eve_ws):
        # Both are offered the trip by distance. Their locations reach the workers on a
        # queue of their own: give them a moment, or they are offered the trip only
        # when the next ring widens.
        await dan_ws.report(near)
        await eve_ws.report(near)
        await asyncio.sleep(1)
        await ann_ws.send(
            {
                "type": "create.trip",
                "request_id": f"ann-{uuid.uuid4().hex[:8]}",
                "data": {
                    "pick_up_address": "Point Nemo",
                    "drop_off_address": "Somewhere drier",
                    "pick_up": PICK_UP,
                    "drop_off": None,
                },
            }
        )
        trip = (await ann_ws.until(of("trip.requested")))["data"]
        offer = await dan_ws.until(of("trip.requested", trip["id"]), wait_seconds=30)
        await eve_ws.until(of("trip.requested", trip["id"]), wait_seconds=30)

        await dan_ws.send({"type": "update.trip", "data": {"id": trip["id"], "status": "STARTED"}})
        await ann_ws.until(of("trip.accepted", trip["id"]))
        await eve_ws.until(of("trip.taken", trip["id"]))
        # Eve, late: refused by a worker, a numbered error naming her request.
        await eve_ws.send(
            {
                "type": "update.trip",
                "request_id": "eve-late-1",
                "data": {"id": trip["id"], "status": "STARTED"},
            }
        )
        await eve_ws.until(lambda frame: frame["type"] == "error")
        await dan_ws.report(PICK_UP)
        await ann_ws.until(lambda frame: frame["type"] == "driver.location")
        for status, event in (("IN_PROGRESS", "trip.picked_up"), ("COMPLETED", "trip.completed")):
            await dan_ws.send({"type": "update.trip", "data": {"id": trip["id"], "status": status}})
            await ann_ws.until(of(event, trip["id"]))

        # A second trip, cancelled while on offer: a numbered cancel for Ann, a
        # withdrawal for the drivers.
        await ann_ws.send(
            {"type": "create.trip", "data": {"pick_up_address": "A", "drop_off_address": "B"}}
        )
        second = (await ann_ws.until(of("trip.requested")))["data"]
        await dan_ws.until(of("trip.requested", second["id"]))
        await ann_ws.send(
            {"type": "update.trip", "data": {"id": second["id"], "status": "CANCELLED"}}
        )
        await ann_ws.until(of("trip.cancelled", second["id"]))
        await dan_ws.until(of("trip.cancelled", second["id"]))

        # The gateway's own refusals.
        for bad in ("{", "[]", '{"type": "fly.me"}', '{"type": "update.trip", "data": {}}'):
            await ann_ws.ws.send(bad)
            await ann_ws.until(lambda frame: frame["type"] == "error")
        await dan_ws.send({"type": "update.location", "data": {"lat": 91, "lng": 0}})
        await dan_ws.until(lambda frame: frame["type"] == "error")
        for socket in (ann_ws, dan_ws, eve_ws):
            await socket.settle()

    # The rider again, from the start of her notifications.
    async with await connect(base_url, rider.access, since=0) as again:
        replayed = Recorded(again)
        await replayed.settle()

    sockets = (ann_ws, dan_ws, eve_ws, replayed)
    frames = [frame for socket in sockets for frame in socket.frames]
    types = {frame["type"] for frame in frames}
    assert types >= {
        "trip.requested",
        "trip.accepted",
        "trip.taken",
        "trip.picked_up",
        "trip.completed",
        "trip.cancelled",
        "driver.location",
        "echo.message",
        "error",
    }
    numbers = [frame["seq"] for frame in replayed.frames if "seq" in frame]
    assert numbers == list(range(1, len(numbers) + 1))
    assert "distance_m" in offer["data"]
    for frame in frames:
        assert frame_errors(frame) == [], frame

    listed = await http.get("/api/trip/?limit=1", headers=bearer(rider))
    assert_described(listed, "/api/trip/", 200)
    assert re.fullmatch(r'</api/trip/\?limit=1&cursor=[\w-]+>; rel="next"', listed.headers["link"])
    one = await http.get(f"/api/trip/{trip['id']}/", headers=bearer(rider))
    assert_described(one, "/api/trip/{trip_id}/", 200)
    for response in (
        await http.get("/api/trip/?limit=0&status=LOST", headers=bearer(rider)),
        await http.get("/api/trip/"),
        await http.get("/api/trip/", headers={"Authorization": "Bearer not.a.token"}),
    ):
        assert_described(response, "/api/trip/", None)
    assert_described(
        await http.get(f"/api/trip/{uuid.uuid4()}/", headers=bearer(rider)),
        "/api/trip/{trip_id}/",
        404,
    )


async def test_a_refused_handshake_answers_with_the_error_body(
    http: httpx.AsyncClient, base_url: str
) -> None:
    rider = await create_account(http, "rider")
    for url, status in (
        (ws_url(base_url, "not.a.token"), 401),
        (ws_url(base_url, None), 401),
        (ws_url(base_url, rider.access, since=10**6), 400),
    ):
        with pytest.raises(websockets.InvalidStatus) as refused:
            await websockets.connect(url, open_timeout=10, subprotocols=SUBPROTOCOLS)
        response = refused.value.response
        assert response.status_code == status
        assert schema_errors("Error", orjson.loads(response.body)) == []


# --- schemathesis ---------------------------------------------------------------------------

# Run as its own command (`schemathesis run`), as a person would: its pytest plugin does
# not run on this pytest. Seeded, so a failure comes back the same on the next run.
SCHEMATHESIS_CONFIG = f"""
seed = 14
workers = 1
request-timeout = 10

[generation]
max-examples = {MAX_EXAMPLES}
database = "none"

[auth.openapi.accessToken]
bearer = "${{TAXI_FUZZ_ACCESS_TOKEN}}"
""" + "".join(
    # A request the schema calls valid may still be refused for what no schema says:
    # passwords that differ or are common, a username taken, a photo that is no image,
    # a token, password or page cursor the fuzzer made up. Those refusals are described
    # (400 and 401) and checked like any answer; only "valid data must be accepted" is
    # left out for them.
    f"""
[[operations]]
include-name = "{name}"
checks.positive_data_acceptance.enabled = false
"""
    for name in (
        "POST /api/sign_up/",
        "POST /api/log_in/",
        "POST /api/token/refresh/",
        "POST /api/log_out/",
        "GET /api/trip/",
    )
)


@pytest.fixture(scope="module")
async def fuzz_account(base_url: str) -> Account:
    async with httpx.AsyncClient(base_url=base_url, timeout=10) as client:
        return await create_account(client, "rider")


def test_the_gateway_keeps_to_its_openapi_description(
    base_url: str, fuzz_account: Account, tmp_path: Path
) -> None:
    """schemathesis sends every endpoint valid and invalid requests, and requests with
    methods it does not take, as a logged-in rider, and checks every answer."""
    config = tmp_path / "schemathesis.toml"
    config.write_text(SCHEMATHESIS_CONFIG)
    command = [
        str(Path(sys.executable).with_name("schemathesis")),
        "--config-file",
        str(config),
        "--no-color",
        "run",
        f"{base_url}/api/openapi.json",
        "--url",
        base_url,
    ]

    result = subprocess.run(
        command,
        cwd=tmp_path,
        env={**os.environ, "TAXI_FUZZ_ACCESS_TOKEN": fuzz_account.access},
        capture_output=True,
        text=True,
        timeout=240,
    )

    assert result.returncode == 0, result.stdout[-30_000:] + result.stderr[-5_000:]
