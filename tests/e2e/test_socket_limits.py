"""What one user can hold of a gateway (PROTOCOL D1, "Limits that hold"): their open
sockets on every gateway together, however many open at once; and a socket whose
client stopped reading, closed whether or not anything more is sent to it.

Each test runs on gateways of its own beside the run's main one (same database and
broker names), so their limits and open sockets are the test's alone.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import httpx
import orjson
import pytest
import websockets
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed

from shared.settings import Settings
from tests.clients import SUBPROTOCOLS, connect, create_account, receive, send, ws_url
from tools.processes import ServiceProcess, metrics_url, start_gateway

SLOW_CLIENT_SECONDS = 1
# Echoes of this size fill a loopback connection's buffers well before the gateway's
# own buffer of frames is full (so nothing more is put to the socket once they stop).
ECHO_BYTES = 60_000
ECHOES = 200


@pytest.fixture(scope="module")
def two_gateways(settings: Settings, log_dir: Path) -> Iterator[list[str]]:
    started: list[tuple[ServiceProcess, str]] = []
    try:
        for _ in range(2):
            started.append(start_gateway(settings, log_dir))
        yield [url for _, url in started]
    finally:
        for process, _ in started:
            process.stop()


@pytest.fixture(scope="module")
def impatient_gateway(settings: Settings, log_dir: Path) -> Iterator[ServiceProcess]:
    process, _ = start_gateway(replace(settings, slow_client_seconds=SLOW_CLIENT_SECONDS), log_dir)
    try:
        yield process
    finally:
        process.stop()


async def answers(ws: ClientConnection) -> bool:
    """Whether the socket still answers an echo (False: it was closed)."""
    marker = {"type": "echo.message", "data": "still there?"}
    try:
        await send(ws, marker)
        while await receive(ws) != marker:
            pass
    except ConnectionClosed:
        return False
    return True


async def test_the_socket_limit_holds_at_once_and_across_gateways(
    two_gateways: list[str], http: httpx.AsyncClient, settings: Settings
) -> None:
    limit = settings.max_sockets_per_user
    opened = limit * 6
    rider = await create_account(http, "rider")
    sockets = await asyncio.gather(
        *(connect(two_gateways[n % 2], rider.access) for n in range(opened))
    )
    try:
        # Every socket has been counted in once it answered (or was closed meanwhile).
        await asyncio.gather(*(answers(ws) for ws in sockets))
        closing = {asyncio.ensure_future(ws.wait_closed()): ws for ws in sockets}
        done: set[asyncio.Future[None]] = set()
        async with asyncio.timeout(30):
            while len(done) < opened - limit:
                finished, _ = await asyncio.wait(
                    set(closing) - done, return_when=asyncio.FIRST_COMPLETED
                )
                done |= finished
        survivors = [ws for future, ws in closing.items() if future not in done]
        for future in set(closing) - done:
            future.cancel()
        assert len(survivors) == limit
        assert all([await answers(ws) for ws in survivors])
        assert {closing[future].close_code for future in done} == {4011}
    finally:
        await asyncio.gather(*(ws.close() for ws in sockets))


async def open_connections(http: httpx.AsyncClient, gateway: ServiceProcess) -> float:
    text = (await http.get(metrics_url(gateway))).text
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("taxi_gateway_open_connections{")
    )


async def test_a_client_that_stops_reading_is_closed_with_nothing_more_sent_to_it(
    impatient_gateway: ServiceProcess, http: httpx.AsyncClient
) -> None:
    rider = await create_account(http, "rider")
    base_url = f"http://127.0.0.1:{impatient_gateway.settings.port}"
    # A client that takes one message off the connection and then reads no more.
    ws = await websockets.connect(
        ws_url(base_url, rider.access), subprotocols=SUBPROTOCOLS, max_queue=1, open_timeout=10
    )
    try:
        echo = orjson.dumps({"type": "echo.message", "data": "x" * ECHO_BYTES}).decode()
        for _ in range(ECHOES):
            await ws.send(echo)
        # Nothing more goes to the socket from here on; the gateway closes it anyway.
        async with httpx.AsyncClient(timeout=5) as probe:
            for _ in range(150):  # polls, 0.2 s apart: 30 s at most
                if await open_connections(probe, impatient_gateway) == 0:
                    break
                await asyncio.sleep(0.2)
            else:
                raise AssertionError("the socket of a client that stopped reading stayed open")
    finally:
        ws.transport.abort()
