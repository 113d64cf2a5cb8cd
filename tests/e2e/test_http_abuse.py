"""HTTP abuse (PROTOCOL D1): log-in and sign-up throttled by user name and client
address, and requests whose headers or body arrive too slowly cut off.

A gateway of its own, with small limits, on the run's database. The throttle's
counts live in Postgres and are shared by every gateway on it, and every test
connects from 127.0.0.1; each test therefore speaks for client addresses of its own,
through `X-Forwarded-For`, which uvicorn takes from a proxy on 127.0.0.1 as it would
from a real reverse proxy.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
import websockets

from shared.settings import Settings
from tests.clients import PASSWORD, SUBPROTOCOLS, new_username, ws_url
from tools.processes import start_gateway

ATTEMPTS = 3
SIGNUPS = 3
WINDOW_SECONDS = 300
READ_SECONDS = 1
# How long a test waits for the gateway to cut a slow request off, at most: far
# beyond READ_SECONDS, so that only a gateway that never does fails.
CUT_OFF_WITHIN_SECONDS = 30
TRICKLE_PAUSE_SECONDS = 0.2

_addresses = itertools.count(1)


def new_address() -> str:
    """A client address no other test speaks for (documentation range, RFC 5737)."""
    n = next(_addresses) + uuid.uuid4().int % 50_000
    return f"198.51.{n // 250 % 250}.{n % 250 + 1}"


@pytest.fixture(scope="module")
def abuse_url(settings: Settings, log_dir: Path) -> Iterator[str]:
    limited = replace(
        settings,
        login_attempts=ATTEMPTS,
        signup_attempts=SIGNUPS,
        login_window_seconds=WINDOW_SECONDS,
        http_read_seconds=READ_SECONDS,
    )
    process, base_url = start_gateway(limited, log_dir)
    try:
        yield base_url
    finally:
        process.stop()


@pytest.fixture
async def client(abuse_url: str) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=abuse_url, timeout=20) as http:
        yield http


def sign_up_fields(username: str | None = None) -> dict[str, str]:
    return {
        "username": username or new_username("rider"),
        "password1": PASSWORD,
        "password2": PASSWORD,
        "group": "rider",
    }


async def signed_up(http: httpx.AsyncClient) -> str:
    """A new user's name, signed up from an address of its own."""
    fields = sign_up_fields()
    response = await http.post(
        "/api/sign_up/", json=fields, headers={"X-Forwarded-For": new_address()}
    )
    assert response.status_code == 201, response.text
    return fields["username"]


async def log_in(
    http: httpx.AsyncClient, username: str, password: str, address: str
) -> httpx.Response:
    return await http.post(
        "/api/log_in/",
        json={"username": username, "password": password},
        headers={"X-Forwarded-For": address},
    )


def assert_rate_limited(response: httpx.Response) -> None:
    assert response.status_code == 429, response.text
    assert response.json().keys() == {"detail", "code"}
    assert response.json()["code"] == "rate_limited"
    assert 0 < int(response.headers["retry-after"]) <= WINDOW_SECONDS


async def test_failed_log_ins_for_one_user_name_are_throttled_from_any_address(
    client: httpx.AsyncClient,
) -> None:
    username = await signed_up(client)
    for _ in range(ATTEMPTS):
        wrong = await log_in(client, username, "not-the-password", new_address())
        assert wrong.status_code == 401, wrong.text

    right = await log_in(client, username, PASSWORD, new_address())

    assert_rate_limited(right)
    assert "user name" in right.json()["detail"]


async def test_failed_log_ins_from_one_address_are_throttled_for_any_user_name(
    client: httpx.AsyncClient,
) -> None:
    username = await signed_up(client)
    address = new_address()
    for _ in range(ATTEMPTS):
        wrong = await log_in(client, new_username("rider"), "guess-1234", address)
        assert wrong.status_code == 401, wrong.text

    assert_rate_limited(await log_in(client, username, PASSWORD, address))
    assert (await log_in(client, username, PASSWORD, new_address())).status_code == 200


async def test_successful_log_ins_are_not_failures(client: httpx.AsyncClient) -> None:
    username = await signed_up(client)
    address = new_address()
    for _ in range(ATTEMPTS - 1):
        assert (await log_in(client, username, "wrong-pass-1", address)).status_code == 401
    for _ in range(ATTEMPTS + 2):
        assert (await log_in(client, username, PASSWORD, address)).status_code == 200

    assert (await log_in(client, username, "wrong-pass-1", address)).status_code == 401
    assert_rate_limited(await log_in(client, username, PASSWORD, address))


async def test_a_burst_of_concurrent_guesses_gets_exactly_the_allowed_failures(
    client: httpx.AsyncClient,
) -> None:
    username = await signed_up(client)

    responses = await asyncio.gather(
        *(log_in(client, username, f"guess-{n}-xyz", new_address()) for n in range(12))
    )

    statuses = sorted(response.status_code for response in responses)
    assert statuses == [401] * ATTEMPTS + [429] * (12 - ATTEMPTS)


async def test_sign_ups_from_one_address_are_throttled(client: httpx.AsyncClient) -> None:
    address = new_address()
    headers = {"X-Forwarded-For": address}
    # A refused sign-up counts too: each costs the gateway a hash or a photo's decoding.
    refused = await client.post(
        "/api/sign_up/", json={**sign_up_fields(), "group": "admin"}, headers=headers
    )
    assert refused.status_code == 400, refused.text
    for _ in range(SIGNUPS - 1):
        created = await client.post("/api/sign_up/", json=sign_up_fields(), headers=headers)
        assert created.status_code == 201, created.text

    throttled = await client.post("/api/sign_up/", json=sign_up_fields(), headers=headers)

    assert_rate_limited(throttled)
    elsewhere = await client.post(
        "/api/sign_up/", json=sign_up_fields(), headers={"X-Forwarded-For": new_address()}
    )
    assert elsewhere.status_code == 201, elsewhere.text


# Slow requests: raw connections, to send what no HTTP client would.


async def raw_connection(base_url: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    parts = urlsplit(base_url)
    return await asyncio.open_connection(parts.hostname, parts.port)


async def trickle(writer: asyncio.StreamWriter, data: bytes) -> None:
    """Send `data` one byte at a time, slowly, until it is sent or the server hangs up."""
    with contextlib.suppress(ConnectionError):
        for byte in data:
            writer.write(bytes([byte]))
            await writer.drain()
            await asyncio.sleep(TRICKLE_PAUSE_SECONDS)


async def answer_to_slow_request(base_url: str, head: bytes, slow: bytes) -> bytes:
    """What the server sends on a connection that sends `head` at once, then `slow` a
    byte at a time: everything it writes before it closes the connection."""
    reader, writer = await raw_connection(base_url)
    try:
        writer.write(head)
        sender = asyncio.create_task(trickle(writer, slow))
        try:
            answer = await asyncio.wait_for(reader.read(), CUT_OFF_WITHIN_SECONDS)
        finally:
            sender.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sender
        return answer
    finally:
        writer.close()


async def test_a_connection_that_sends_nothing_is_closed(abuse_url: str) -> None:
    reader, writer = await raw_connection(abuse_url)
    try:
        assert await asyncio.wait_for(reader.read(), CUT_OFF_WITHIN_SECONDS) == b""
    finally:
        writer.close()


async def test_headers_sent_a_byte_at_a_time_are_cut_off_with_408(abuse_url: str) -> None:
    # Far more header than READ_SECONDS lets through at this pace.
    slow = b"X-Padding: " + b"a" * 500 + b"\r\n\r\n"

    answer = await answer_to_slow_request(abuse_url, b"GET /healthz HTTP/1.1\r\nHost: x\r\n", slow)

    assert answer.startswith(b"HTTP/1.1 408"), answer
    assert b'"code": "request_timeout"' in answer


async def test_a_body_sent_a_byte_at_a_time_is_cut_off_with_408(abuse_url: str) -> None:
    body = b'{"username": "' + b"a" * 400 + b'", "password": "x"}'
    head = (
        b"POST /api/log_in/ HTTP/1.1\r\nHost: x\r\ncontent-type: application/json\r\n"
        b"content-length: %d\r\n\r\n" % len(body)
    )

    answer = await answer_to_slow_request(abuse_url, head, body)

    assert answer.startswith(b"HTTP/1.1 408"), answer


async def test_an_open_websocket_outlives_the_read_deadline(
    abuse_url: str, client: httpx.AsyncClient
) -> None:
    username = await signed_up(client)
    tokens = (await log_in(client, username, PASSWORD, new_address())).json()
    async with websockets.connect(
        ws_url(abuse_url, tokens["access"]), open_timeout=10, subprotocols=SUBPROTOCOLS
    ) as socket:
        # A slow request on another connection is cut off: the deadline has passed
        # for anything opened before it, the socket included.
        cut_off = await answer_to_slow_request(
            abuse_url, b"GET /healthz HTTP/1.1\r\n", b"Host: " + b"x" * 500
        )
        assert cut_off.startswith(b"HTTP/1.1 408"), cut_off

        await socket.send('{"type": "echo.message", "data": "still here"}')
        echo = await asyncio.wait_for(socket.recv(), 10)

    assert "still here" in str(echo)
