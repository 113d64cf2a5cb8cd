"""The frame-size limit and the per-connection rate limit are settings, enforced on the wire.

Each limit gets a gateway of its own, started with small values so the tests can
reach them quickly; the run's main gateway is left alone.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import websockets
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed, ConnectionClosedError

from shared.settings import Settings
from tests.clients import SUBPROTOCOLS, create_account, receive
from tools.processes import start_gateway

SMALL_FRAME_LIMIT = 1024
RATE_PER_SECOND = 2
BURST = 3
# The gateway cuts a client off after this many refused frames in a row.
REFUSALS_BEFORE_CLOSE = 10


@pytest.fixture(scope="module")
def small_frames_url(settings: Settings, log_dir: Path) -> Iterator[str]:
    process, base_url = start_gateway(replace(settings, max_frame_bytes=SMALL_FRAME_LIMIT), log_dir)
    try:
        yield base_url
    finally:
        process.stop()


@pytest.fixture(scope="module")
def rate_limited_url(settings: Settings, log_dir: Path) -> Iterator[str]:
    limited = replace(settings, rate_limit_per_second=RATE_PER_SECOND, rate_limit_burst=BURST)
    process, base_url = start_gateway(limited, log_dir)
    try:
        yield base_url
    finally:
        process.stop()


async def connect_to(base_url: str, http: httpx.AsyncClient) -> ClientConnection:
    """A rider (signed up through the main gateway: same database) connected to `base_url`."""
    rider = await create_account(http, "rider")
    url = base_url.replace("http://", "ws://") + f"/taxi/?token={rider.access}"
    return await websockets.connect(url, open_timeout=10, subprotocols=SUBPROTOCOLS)


def echo_of_size(size: int) -> str:
    """An echo frame exactly `size` bytes long."""
    frame = orjson.dumps({"type": "echo.message", "data": ""}).decode()
    padding = size - len(frame)
    assert padding >= 0
    text = orjson.dumps({"type": "echo.message", "data": "x" * padding}).decode()
    assert len(text.encode()) == size
    return text


# -- frame size -----------------------------------------------------------------------------


@pytest.mark.parametrize("size", [1000, SMALL_FRAME_LIMIT])
async def test_a_frame_within_the_configured_limit_is_answered(
    small_frames_url: str, http: httpx.AsyncClient, size: int
) -> None:
    frame = echo_of_size(size)
    async with await connect_to(small_frames_url, http) as ws:
        await ws.send(frame)
        assert await receive(ws) == orjson.loads(frame)


@pytest.mark.parametrize("kind", ["text", "binary"])
async def test_a_frame_one_byte_over_the_configured_limit_closes_with_1009(
    small_frames_url: str, http: httpx.AsyncClient, kind: str
) -> None:
    frame = echo_of_size(SMALL_FRAME_LIMIT + 1)
    async with await connect_to(small_frames_url, http) as ws:
        await ws.send(frame if kind == "text" else frame.encode())
        with pytest.raises(ConnectionClosedError) as closed:
            await receive(ws)
    assert closed.value.rcvd is not None
    assert closed.value.rcvd.code == 1009


async def test_the_main_gateway_still_takes_frames_the_small_limit_refuses(
    base_url: str, http: httpx.AsyncClient
) -> None:
    """The limit is the setting, not a constant: the default gateway answers 1025 bytes."""
    frame = echo_of_size(SMALL_FRAME_LIMIT + 1)
    async with await connect_to(base_url, http) as ws:
        await ws.send(frame)
        assert await receive(ws) == orjson.loads(frame)


# -- rate limit ------------------------------------------------------------------------------


def is_rate_limited(frame: dict[str, Any]) -> bool:
    return frame["type"] == "error" and frame["data"]["code"] == "rate_limited"


async def test_a_burst_over_the_limit_gets_rate_limited_errors_and_the_socket_stays_open(
    rate_limited_url: str, http: httpx.AsyncClient
) -> None:
    async with await connect_to(rate_limited_url, http) as ws:
        for n in range(BURST + 1):
            await ws.send(orjson.dumps({"type": "echo.message", "data": n}).decode())
        answers = [await receive(ws) for _ in range(BURST + 1)]
        refused = [a for a in answers if is_rate_limited(a)]
        assert refused, answers
        assert all(f"at most {RATE_PER_SECOND} per second" in r["data"]["message"] for r in refused)
        echoed = [a["data"] for a in answers if a["type"] == "echo.message"]
        assert echoed[:BURST] == list(range(BURST))
        # Still connected: once the bucket refills, frames are answered again. The
        # refill is a matter of time, so waiting (a little over one token's worth) is
        # the behaviour under test here, not a stand-in for synchronisation.
        await asyncio.sleep(1.2 / RATE_PER_SECOND)
        await ws.send(orjson.dumps({"type": "echo.message", "data": "later"}).decode())
        assert await receive(ws) == {"type": "echo.message", "data": "later"}


async def test_a_client_that_keeps_flooding_is_closed_with_4008(
    rate_limited_url: str, http: httpx.AsyncClient
) -> None:
    answers: list[dict[str, Any]] = []
    async with await connect_to(rate_limited_url, http) as ws:
        for n in range(50):
            try:
                await ws.send(orjson.dumps({"type": "echo.message", "data": n}).decode())
            except ConnectionClosed:
                break
        with pytest.raises(ConnectionClosed) as closed:
            while True:
                answers.append(await receive(ws))
    assert closed.value.rcvd is not None
    assert closed.value.rcvd.code == 4008
    assert closed.value.rcvd.reason == "rate limit exceeded"
    refused = [a for a in answers if is_rate_limited(a)]
    assert len(refused) >= REFUSALS_BEFORE_CLOSE
    assert [a["type"] for a in answers[:BURST]] == ["echo.message"] * BURST
    assert {a["type"] for a in answers} <= {"echo.message", "error"}


async def test_a_client_under_the_limit_is_never_refused(
    rate_limited_url: str, http: httpx.AsyncClient
) -> None:
    # A paced client: 1.6 frames a second against a limit of 2 (pacing is the point).
    interval = 1.25 / RATE_PER_SECOND
    async with await connect_to(rate_limited_url, http) as ws:
        # The whole burst at once is allowed...
        for n in range(BURST):
            await ws.send(orjson.dumps({"type": "echo.message", "data": n}).decode())
        assert [(await receive(ws))["data"] for _ in range(BURST)] == list(range(BURST))
        # ...and so is a steady pace under the rate, once the burst is spent.
        started = time.monotonic()
        for n in range(BURST, BURST + 5):
            await asyncio.sleep(max(0.0, started + (n - BURST + 1) * interval - time.monotonic()))
            await ws.send(orjson.dumps({"type": "echo.message", "data": n}).decode())
            assert await receive(ws) == {"type": "echo.message", "data": n}


async def test_pings_count_toward_the_rate_limit_and_a_client_that_keeps_pinging_is_cut_off(
    rate_limited_url: str, http: httpx.AsyncClient
) -> None:
    async with await connect_to(rate_limited_url, http) as ws:
        pongs = []
        for _ in range(BURST + REFUSALS_BEFORE_CLOSE + 5):
            try:
                pongs.append(await ws.ping())
            except ConnectionClosed:
                break
        await asyncio.wait_for(ws.wait_closed(), 10)
    # Only pings were sent: the close says they counted toward the limit.
    assert ws.close_code == 4008
    assert ws.close_reason == "rate limit exceeded"
    # The burst's pings were answered. (Whether those over the limit were cannot be
    # told from here: a pong acknowledges every earlier ping, so on a slow machine a
    # token refilled mid-burst makes the refused pings before it look answered.)
    answered = [pong for pong in pongs if pong.done() and not pong.cancelled()]
    answered = [pong for pong in answered if pong.exception() is None]
    assert len(answered) >= BURST
