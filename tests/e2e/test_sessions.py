"""Sessions that end (issue "describe the service", PROTOCOL C4's companion): refresh
tokens rotate and a reused one ends its family, log-out ends a session, deactivating
a user or changing their password closes their sockets with 4003 and refuses their
tokens, and a user holds at most TAXI_MAX_SOCKETS_PER_USER sockets (the oldest is
closed with 4011)."""

from __future__ import annotations

import asyncio
import time

import asyncpg
import httpx
import pytest
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed, InvalidStatus

from shared.settings import Settings
from tests.clients import (
    Account,
    connect,
    create_account,
    equal_to,
    receive,
    receive_until,
    send,
)

ECHO = {"type": "echo.message", "data": "still here"}


async def refresh(http: httpx.AsyncClient, token: str) -> httpx.Response:
    return await http.post("/api/token/refresh/", json={"refresh": token})


async def test_refresh_tokens_rotate_and_reusing_one_ends_the_whole_session(
    http: httpx.AsyncClient,
) -> None:
    account = await create_account(http, "rider")

    first = await refresh(http, account.refresh)
    second = await refresh(http, first.json()["refresh"])
    replayed = await refresh(http, account.refresh)  # a copy someone kept
    after = await refresh(http, second.json()["refresh"])

    assert first.status_code == 200 and set(first.json()) == {"access", "refresh"}
    assert first.json()["refresh"] != account.refresh
    assert second.status_code == 200, second.text
    assert replayed.status_code == 401
    assert replayed.json()["code"] == "token_not_valid"
    assert "used before" in replayed.json()["detail"]
    # The family ended: the newest token of the session is refused too.
    assert after.status_code == 401
    assert "ended" in after.json()["detail"]


async def test_log_out_ends_the_session_and_only_that_one(http: httpx.AsyncClient) -> None:
    account = await create_account(http, "rider")
    other = await http.post(
        "/api/log_in/", json={"username": account.user["username"], "password": "pAssw0rd!"}
    )

    logged_out = await http.post("/api/log_out/", json={"refresh": account.refresh})
    again = await http.post("/api/log_out/", json={"refresh": account.refresh})

    assert logged_out.status_code == 204
    assert again.status_code == 204
    assert (await refresh(http, account.refresh)).status_code == 401
    # A session started by another log-in (another device) goes on.
    assert (await refresh(http, other.json()["refresh"])).status_code == 200


async def closed_with(ws: ClientConnection, within: float) -> tuple[int | None, float]:
    """The close code the server sends, and how long it took to come."""
    started = time.monotonic()
    with pytest.raises(ConnectionClosed) as closed:
        async with asyncio.timeout(within):
            while True:
                await ws.recv()
    return closed.value.rcvd.code if closed.value.rcvd else None, time.monotonic() - started


async def assert_refused_everywhere(
    http: httpx.AsyncClient, base_url: str, account: Account
) -> None:
    with pytest.raises(InvalidStatus) as refused:
        await connect(base_url, account.access)
    assert refused.value.response.status_code == 401
    listed = await http.get("/api/trip/", headers={"Authorization": f"Bearer {account.access}"})
    assert listed.status_code == 401
    assert (await refresh(http, account.refresh)).status_code == 401


@pytest.mark.parametrize(
    "change",
    [
        "UPDATE users SET is_active = false WHERE id = $1",
        "UPDATE users SET password_hash = 'changed' WHERE id = $1",
    ],
)
async def test_ending_a_users_sessions_closes_their_sockets_and_refuses_their_tokens(
    http: httpx.AsyncClient,
    base_url: str,
    db: asyncpg.Connection,
    settings: Settings,
    change: str,
) -> None:
    account = await create_account(http, "driver")
    async with await connect(base_url, account.access) as phone:
        await send(phone, ECHO)
        assert await receive_until(phone, equal_to(ECHO)) == ECHO

        await db.execute(change, account.id)
        code, took = await closed_with(phone, settings.revoke_seconds + 5)

    assert code == 4003
    assert took <= settings.revoke_seconds + 1
    await assert_refused_everywhere(http, base_url, account)


async def test_tokens_issued_after_a_reactivation_work_at_once(
    http: httpx.AsyncClient, base_url: str, db: asyncpg.Connection
) -> None:
    account = await create_account(http, "rider")
    await db.execute("UPDATE users SET is_active = false WHERE id = $1", account.id)
    await db.execute("UPDATE users SET is_active = true WHERE id = $1", account.id)

    logged_in = await http.post(
        "/api/log_in/", json={"username": account.user["username"], "password": "pAssw0rd!"}
    )
    async with await connect(base_url, logged_in.json()["access"]) as ws:
        await send(ws, ECHO)
        echoed = await receive(ws)

    assert echoed == ECHO
    assert (await refresh(http, account.refresh)).status_code == 401  # from before


async def test_a_new_socket_beyond_the_limit_closes_the_users_oldest_with_4011(
    http: httpx.AsyncClient, base_url: str, settings: Settings
) -> None:
    account = await create_account(http, "rider")
    oldest = await connect(base_url, account.access)
    others = [
        await connect(base_url, account.access) for _ in range(settings.max_sockets_per_user - 1)
    ]
    try:
        newest = await connect(base_url, account.access)
        code, _ = await closed_with(oldest, 10)
        for ws in (*others, newest):
            await send(ws, ECHO)
            assert await receive(ws) == ECHO
    finally:
        for ws in (oldest, *others):
            await ws.close()
        await newest.close()

    assert code == 4011
