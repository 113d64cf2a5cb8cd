"""No password, token or secret reaches a log line, at the most verbose log level.

Self-contained: the test runs a gateway and a dispatcher of its own (own log files,
own broker prefix, own JWT secret), walks a user through everything that handles a
secret, stops both processes and then reads every line they wrote.
"""

from __future__ import annotations

import asyncio
import socket
import struct
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
import websockets
from websockets.exceptions import InvalidStatus

from shared.settings import Settings
from tests.clients import (
    SUBPROTOCOLS,
    connect,
    create_account,
    receive,
    receive_until,
    send,
    ws_url,
)
from tools.cleanup import delete_broker_objects
from tools.processes import ServiceProcess, start_dispatcher, start_gateway


@dataclass
class Stack:
    settings: Settings
    base_url: str
    gateway: ServiceProcess
    dispatcher: ServiceProcess
    # Users whose queues live under this stack's prefix, to delete with it.
    user_ids: list[int] = field(default_factory=list)


@pytest.fixture
async def stack(settings: Settings, tmp_path: Path) -> AsyncIterator[Stack]:
    own = replace(
        settings,
        broker_prefix=f"{settings.broker_prefix}-hygiene-{uuid.uuid4().hex[:6]}",
        jwt_secret=f"log-hygiene-jwt-secret-{uuid.uuid4().hex}",
        log_level="DEBUG",
    )
    user_ids: list[int] = []
    dispatcher = await asyncio.to_thread(start_dispatcher, own, tmp_path / "dispatcher.log")
    try:
        gateway, base_url = await asyncio.to_thread(start_gateway, own, tmp_path)
        try:
            yield Stack(own, base_url, gateway, dispatcher, user_ids)
        finally:
            await asyncio.to_thread(gateway.stop)
    finally:
        await asyncio.to_thread(dispatcher.stop)
        await delete_broker_objects(own)


async def test_no_password_token_or_secret_appears_in_any_log_line(stack: Stack) -> None:
    marker = uuid.uuid4().hex[:10]
    password = f"Hygiene-Passw0rd-{marker}!"
    wrong_password = f"Wrong-Passw0rd-{marker}!"
    mismatched = f"Mismatched-Passw0rd-{marker}!"
    username = f"hygiene-{marker}@example.com"
    async with httpx.AsyncClient(base_url=stack.base_url, timeout=10) as http:
        refused_sign_up = await http.post(
            "/api/sign_up/",
            data={
                "username": username,
                "password1": password,
                "password2": mismatched,
                "group": "rider",
            },
        )
        assert refused_sign_up.status_code == 400, refused_sign_up.text
        signed_up = await http.post(
            "/api/sign_up/",
            json={
                "username": username,
                "first_name": "Hy",
                "last_name": "Giene",
                "password1": password,
                "password2": password,
                "group": "rider",
            },
        )
        assert signed_up.status_code == 201, signed_up.text
        user_id = signed_up.json()["id"]
        stack.user_ids.append(user_id)

        logged_in = await http.post(
            "/api/log_in/", json={"username": username, "password": password}
        )
        assert logged_in.status_code == 200, logged_in.text
        access, refresh = logged_in.json()["access"], logged_in.json()["refresh"]

        async with await connect(stack.base_url, access) as ws:
            await send(ws, {"type": "echo.message", "data": "hello"})
            assert await receive(ws) == {"type": "echo.message", "data": "hello"}
            await send(
                ws,
                {
                    "type": "create.trip",
                    "data": {"pick_up_address": "1 Log St", "drop_off_address": "2 Log St"},
                },
            )
            requested = await receive_until(ws, lambda f: f["type"] in ("trip.requested", "error"))
            assert requested["type"] == "trip.requested", requested

        refreshed = await http.post("/api/token/refresh/", json={"refresh": refresh})
        assert refreshed.status_code == 200, refreshed.text
        new_access = refreshed.json()["access"]

        trips = await http.get("/api/trip/", headers={"Authorization": f"Bearer {new_access}"})
        assert [t["id"] for t in trips.json()] == [requested["data"]["id"]]

        failed = await http.post(
            "/api/log_in/", json={"username": username, "password": wrong_password}
        )
        assert failed.status_code == 401, failed.text

    # A refresh token in the handshake URL is refused, and must not be logged either.
    with pytest.raises(InvalidStatus) as refused:
        async with websockets.connect(
            ws_url(stack.base_url, refresh), open_timeout=10, subprotocols=SUBPROTOCOLS
        ):
            pass
    assert refused.value.response.status_code == 401

    assert await asyncio.to_thread(stack.gateway.stop) == 0, stack.gateway.log()
    assert await asyncio.to_thread(stack.dispatcher.stop) == 0, stack.dispatcher.log()
    logs = {"gateway": stack.gateway.log(), "dispatcher": stack.dispatcher.log()}

    secrets = {
        "password": password,
        "wrong password": wrong_password,
        "mismatched password": mismatched,
        "access token": access,
        "refreshed access token": new_access,
        "refresh token": refresh,
        "access token signature": access.rsplit(".", 1)[1],
        "refreshed access token signature": new_access.rsplit(".", 1)[1],
        "refresh token signature": refresh.rsplit(".", 1)[1],
        "JWT secret": stack.settings.jwt_secret,
    }
    for url in (stack.settings.amqp_url, stack.settings.database_url):
        parts = urlsplit(url)
        if parts.password:
            secrets[f"password of {parts.scheme} URL"] = f":{parts.password}@"
    for process, log in logs.items():
        for name, secret in secrets.items():
            leaks = [line for line in log.splitlines() if secret in line]
            assert not leaks, f"the {name} appears in the {process} log: {leaks[:3]}"

    # The logs are not just empty: they tell what happened, with the token redacted.
    gateway_log, dispatcher_log = logs["gateway"], logs["dispatcher"]
    assert f"socket opened user_id={user_id} group=rider" in gateway_log
    assert f"socket closed user_id={user_id}" in gateway_log
    assert "/taxi/?token=[redacted]" in gateway_log
    assert "command applied message_id=" in dispatcher_log
    assert f"user_id={user_id} trip_id={requested['data']['id']}" in dispatcher_log


async def drop(base_url: str, request: bytes, then_send: list[bytes]) -> None:
    """Open a TCP connection, send `request` and `then_send`, and reset the connection
    (SO_LINGER 0: an RST, as a phone that loses its network), reading nothing."""
    parts = urlsplit(base_url)
    _, writer = await asyncio.open_connection(parts.hostname, parts.port)
    for data in (request, *then_send):
        writer.write(data)
    await writer.drain()
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


def masked_text_frame(text: str) -> bytes:
    payload = text.encode()
    header = bytes([0x81])
    size = len(payload)
    header += bytes([0x80 | 126]) + struct.pack(">H", size) if size >= 126 else bytes([0x80 | size])
    # A zero mask leaves the payload as it is.
    return header + b"\x00\x00\x00\x00" + payload


async def test_a_client_that_drops_mid_handshake_or_mid_send_is_no_traceback(
    stack: Stack,
) -> None:
    async with httpx.AsyncClient(base_url=stack.base_url, timeout=10) as http:
        account = await create_account(http, "rider")
    host = urlsplit(stack.base_url).netloc
    upgrade = (
        f"GET /taxi/?token={account.access} HTTP/1.1\r\nHost: {host}\r\n"
        "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    ).encode()
    # Echoes of 60 KB each, more than the socket takes before the client resets it.
    echoes = [masked_text_frame(f'{{"type":"echo.message","data":"{"x" * 60000}"}}')] * 40
    for _ in range(10):
        await drop(stack.base_url, upgrade, [])  # while the gateway checks the token
        await drop(stack.base_url, upgrade, echoes)  # while it sends the echoes back
    # The gateway still serves, and every socket above was let go.
    async with await connect(stack.base_url, account.access) as ws:
        await send(ws, {"type": "echo.message", "data": "after"})
        assert (await receive(ws))["data"] == "after"

    assert await asyncio.to_thread(stack.gateway.stop) == 0
    log = stack.gateway.log()
    assert "Traceback" not in log
    assert "Exception in ASGI application" not in log
