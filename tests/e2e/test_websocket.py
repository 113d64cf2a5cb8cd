"""The seed's WebSocket tests, against a real uvicorn gateway and a real broker."""

from __future__ import annotations

import time

import aio_pika
import asyncpg
import httpx
import pytest
import websockets
from websockets.exceptions import ConnectionClosedError, InvalidStatus

from gateway.tokens import TokenService
from shared.settings import Settings
from shared.topology import DRIVER_OFFERS_KEY, Topology
from shared.users import User
from tests.clients import SUBPROTOCOLS, connect, create_account, receive, send, ws_url


async def test_can_connect_to_server(http: httpx.AsyncClient, base_url: str) -> None:
    rider = await create_account(http, "rider")
    async with await connect(base_url, rider.access) as ws:
        await send(ws, {"type": "echo.message", "data": "ping"})
        assert (await receive(ws))["data"] == "ping"


async def test_can_send_and_receive_messages(http: httpx.AsyncClient, base_url: str) -> None:
    rider = await create_account(http, "rider")
    message = {"type": "echo.message", "data": "This is a test message."}
    async with await connect(base_url, rider.access) as ws:
        await send(ws, message)
        assert await receive(ws) == message


async def test_can_send_and_receive_broadcast_messages(
    http: httpx.AsyncClient,
    base_url: str,
    settings: Settings,
    amqp: aio_pika.abc.AbstractConnection,
) -> None:
    driver = await create_account(http, "driver")
    message = {"type": "echo.message", "data": "This is a test message."}
    async with await connect(base_url, driver.access) as ws:
        channel = await amqp.channel()
        notifications = await channel.get_exchange(
            Topology(settings.broker_prefix).notifications_exchange
        )
        await notifications.publish(
            aio_pika.Message(b'{"type": "echo.message", "data": "This is a test message."}'),
            DRIVER_OFFERS_KEY,
        )
        assert await receive(ws) == message


async def test_cannot_connect_without_token(base_url: str) -> None:
    with pytest.raises(InvalidStatus) as refused:
        await websockets.connect(ws_url(base_url, None), subprotocols=SUBPROTOCOLS)
    assert refused.value.response.status_code == 401
    assert b"token is required" in refused.value.response.body


async def test_expired_token_is_refused_with_401(
    http: httpx.AsyncClient, base_url: str, settings: Settings
) -> None:
    rider = await create_account(http, "rider")
    two_hours_ago = TokenService(settings.jwt_secret, 60, 60, clock=lambda: time.time() - 7200)
    expired = two_hours_ago.issue(User(**rider.user), "access")
    with pytest.raises(InvalidStatus) as refused:
        await websockets.connect(ws_url(base_url, expired), subprotocols=SUBPROTOCOLS)
    assert refused.value.response.status_code == 401
    assert b"expired" in refused.value.response.body


async def test_refresh_token_is_refused_with_401(http: httpx.AsyncClient, base_url: str) -> None:
    rider = await create_account(http, "rider")
    with pytest.raises(InvalidStatus) as refused:
        await websockets.connect(ws_url(base_url, rider.refresh), subprotocols=SUBPROTOCOLS)
    assert refused.value.response.status_code == 401
    assert b"send an access token" in refused.value.response.body


async def test_forged_token_is_refused_with_401(http: httpx.AsyncClient, base_url: str) -> None:
    rider = await create_account(http, "rider")
    forged = TokenService("another-secret-that-is-long-enough-to-sign", 60, 60).issue(
        User(**rider.user), "access"
    )
    with pytest.raises(InvalidStatus) as refused:
        await websockets.connect(ws_url(base_url, forged), subprotocols=SUBPROTOCOLS)
    assert refused.value.response.status_code == 401


async def test_inactive_user_is_refused_with_401(
    http: httpx.AsyncClient, base_url: str, db: asyncpg.Connection
) -> None:
    rider = await create_account(http, "rider")
    await db.execute("UPDATE users SET is_active = false WHERE id = $1", rider.id)
    with pytest.raises(InvalidStatus) as refused:
        await websockets.connect(ws_url(base_url, rider.access), subprotocols=SUBPROTOCOLS)
    assert refused.value.response.status_code == 401


async def test_bad_frames_get_error_frames_and_the_connection_stays_open(
    http: httpx.AsyncClient, base_url: str
) -> None:
    rider = await create_account(http, "rider")
    async with await connect(base_url, rider.access) as ws:
        await ws.send("this is not JSON")
        error = await receive(ws)
        assert error["type"] == "error"
        assert error["data"]["code"] == "invalid_json"

        await send(ws, {"type": "no.such.thing", "data": {}})
        error = await receive(ws)
        assert error["data"] == {
            "code": "unknown_type",
            "message": error["data"]["message"],
            "request": "no.such.thing",
            "request_id": None,
            "trip_id": None,
        }
        assert "echo.message" in error["data"]["message"]

        await ws.send("[1, 2, 3]")
        assert (await receive(ws))["data"]["code"] == "invalid_frame"

        await send(ws, {"type": "echo.message", "data": "still here"})
        assert await receive(ws) == {"type": "echo.message", "data": "still here"}


async def test_oversized_frame_closes_with_1009(
    http: httpx.AsyncClient, base_url: str, settings: Settings
) -> None:
    rider = await create_account(http, "rider")
    async with await connect(base_url, rider.access) as ws:
        await ws.send("x" * (settings.max_frame_bytes + 1))
        with pytest.raises(ConnectionClosedError) as closed:
            await receive(ws)
        assert closed.value.rcvd is not None
        assert closed.value.rcvd.code == 1009
