"""PROTOCOL D1, "Sessions end everywhere": when a session family ends (refresh-token
reuse, log-out, password change, deactivation), every access token issued from it is
refused over HTTP and at the handshake, its sockets are closed with 4003 within
TAXI_REVOKE_SECONDS of the commit however long the transaction that ended it took,
and commands sent on them are not applied.

Where a test needs the commit to land just after one of the gateway's revocation
checks (so that a command can be sent on the old socket before the next one closes
it), it watches the checks happen through the gateway's own metric
(`taxi_gateway_revocation_checks_total`) rather than sleeping."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import asyncpg
import httpx
import pytest
import websockets
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed, InvalidStatus

from gateway.tokens import TokenService
from gateway.web.passwords import Passwords
from shared.settings import Settings
from shared.users import User
from tests.clients import (
    PASSWORD,
    Account,
    connect,
    create_account,
    equal_to,
    is_error,
    receive_until,
    send,
    ws_url,
)
from tools.processes import ServiceProcess, metrics_url

ECHO = {"type": "echo.message", "data": "still here"}


NEW_PASSWORD = "n3w-pAssw0rd!"
CHECKS = "taxi_gateway_revocation_checks_total"


@pytest.fixture
def gateway_metrics(gateway_process: tuple[ServiceProcess, str]) -> str:
    return metrics_url(gateway_process[0])


async def revocation_checks(metrics: str) -> float:
    async with httpx.AsyncClient(timeout=5) as client:
        text = (await client.get(metrics)).text
    for line in text.splitlines():
        if line.startswith(f"{CHECKS} "):
            return float(line.split()[1])
    raise AssertionError(f"the gateway does not report {CHECKS}")


async def just_after_a_check(metrics: str, at_least: int = 1) -> None:
    """Return as soon as the gateway has completed `at_least` more revocation checks."""
    start = await revocation_checks(metrics)

    async def checked() -> bool:
        return await revocation_checks(metrics) >= start + at_least

    await wait_until(checked, within=30)


async def wait_until(condition: Callable[[], Awaitable[bool]], within: float = 10) -> None:
    deadline = asyncio.get_running_loop().time() + within
    while not await condition():
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


async def connect_v2(base_url: str, token: str) -> ClientConnection:
    """A socket speaking the full protocol (error frames included) where the gateway
    offers dialects; a plain socket where it does not."""
    return await websockets.connect(ws_url(base_url, token), subprotocols=["taxi.v2"])  # type: ignore[list-item]


async def log_in(http: httpx.AsyncClient, account: Account, password: str) -> dict[str, str]:
    response = await http.post(
        "/api/log_in/", json={"username": account.user["username"], "password": password}
    )
    assert response.status_code == 200, response.text
    return dict(response.json())


async def closed_within(ws: ClientConnection, since: float, bound: float) -> int | None:
    """The close code the server sends, asserting it came within `bound` seconds of
    the moment `since` (time.monotonic)."""
    with pytest.raises(ConnectionClosed) as closed:
        async with asyncio.timeout(bound + 5):
            while True:
                await ws.recv()
    took = time.monotonic() - since
    assert took <= bound, f"closed {took:.2f}s after the commit; the bound is {bound}s"
    return closed.value.rcvd.code if closed.value.rcvd else None


def create_trip(request_id: str) -> dict[str, object]:
    return {
        "type": "create.trip",
        "request_id": request_id,
        "data": {"pick_up_address": "Old session street 1", "drop_off_address": "B"},
    }


async def refused_command(witness: ClientConnection, request_id: str) -> dict[str, object]:
    """The error frame refusing the command `request_id`, as another socket of the user
    (one of a live session) receives it: proof the dispatcher handled it."""
    frame = await receive_until(
        witness,
        lambda frame: is_error(frame) and frame["data"].get("request_id") == request_id,
    )
    return dict(frame["data"])


async def assert_token_refused(http: httpx.AsyncClient, base_url: str, access: str) -> None:
    with pytest.raises(InvalidStatus) as refused:
        await connect(base_url, access)
    assert refused.value.response.status_code == 401
    listed = await http.get("/api/trip/", headers={"Authorization": f"Bearer {access}"})
    assert listed.status_code == 401, listed.text
    assert listed.json()["code"] == "token_not_valid"


async def trips_of(db: asyncpg.Connection, user_id: int) -> int:
    return int(await db.fetchval("SELECT count(*) FROM trips WHERE rider_id = $1", user_id))


@asynccontextmanager
async def open_transaction(settings: Settings) -> AsyncIterator[asyncpg.Connection]:
    """A connection of its own with a transaction open; the caller commits it."""
    conn = await asyncpg.connect(settings.database_url)
    try:
        await conn.execute("BEGIN")
        yield conn
    finally:
        await conn.close()  # rolls back whatever was not committed


async def test_a_password_change_in_a_slow_transaction_closes_old_sockets_and_refuses_commands(
    http: httpx.AsyncClient,
    base_url: str,
    db: asyncpg.Connection,
    settings: Settings,
    gateway_metrics: str,
    dispatchers: object,
) -> None:
    account = await create_account(http, "rider")
    new_hash = await Passwords(settings.password_hashing).hash(NEW_PASSWORD)
    async with await connect(base_url, account.access) as old:
        await send(old, ECHO)
        assert await receive_until(old, equal_to(ECHO)) == ECHO

        async with open_transaction(settings) as slow:
            await slow.execute(
                "UPDATE users SET password_hash = $2 WHERE id = $1", account.id, new_hash
            )
            # The gateway looks at least twice while the change is stamped but not
            # committed; then the commit lands just after one of its looks.
            await just_after_a_check(gateway_metrics, at_least=2)
            await just_after_a_check(gateway_metrics)
            await slow.execute("COMMIT")
            committed = time.monotonic()

        tokens = await log_in(http, account, NEW_PASSWORD)
        async with await connect_v2(base_url, tokens["access"]) as witness:
            await send(old, create_trip("after-the-password-change"))
            code = await closed_within(old, committed, settings.revoke_seconds)
            refusal = await refused_command(witness, "after-the-password-change")

    assert code == 4003
    assert refusal["code"] == "forbidden"
    assert await trips_of(db, account.id) == 0
    await assert_token_refused(http, base_url, account.access)


async def test_a_refresh_during_a_slow_password_change_gets_no_token_that_outlives_it(
    http: httpx.AsyncClient, base_url: str, settings: Settings
) -> None:
    account = await create_account(http, "rider")
    async with open_transaction(settings) as slow:
        await slow.execute("UPDATE users SET password_hash = 'changed' WHERE id = $1", account.id)
        refreshing = asyncio.create_task(
            http.post("/api/token/refresh/", json={"refresh": account.refresh})
        )
        # The refresh either answers at once or waits for this transaction's lock.
        pid = slow.get_server_pid()

        async def answered_or_waiting() -> bool:
            return refreshing.done() or bool(
                await slow.fetchval(
                    "SELECT count(*) FROM pg_stat_activity WHERE $1 = ANY(pg_blocking_pids(pid))",
                    pid,
                )
            )

        await wait_until(answered_or_waiting)
        await slow.execute("COMMIT")
    response = await refreshing

    assert response.status_code == 401, response.text
    if response.status_code == 200:  # what used to happen: a token that outlived the change
        await assert_token_refused(http, base_url, response.json()["access"])


async def test_reusing_a_refresh_token_stops_the_thief_everywhere(
    http: httpx.AsyncClient,
    base_url: str,
    db: asyncpg.Connection,
    settings: Settings,
    gateway_metrics: str,
    dispatchers: object,
) -> None:
    owner = await create_account(http, "rider")
    stolen = await http.post("/api/token/refresh/", json={"refresh": owner.refresh})
    assert stolen.status_code == 200, stolen.text
    thief = stolen.json()
    other_device = await log_in(http, owner, PASSWORD)  # a session of its own

    async with (
        await connect(base_url, thief["access"]) as thief_socket,
        await connect_v2(base_url, other_device["access"]) as witness,
    ):
        await send(thief_socket, ECHO)
        assert await receive_until(thief_socket, equal_to(ECHO)) == ECHO

        await just_after_a_check(gateway_metrics)
        reused = await http.post("/api/token/refresh/", json={"refresh": owner.refresh})
        ended = time.monotonic()
        await send(thief_socket, create_trip("thief-after-the-reuse"))
        code = await closed_within(thief_socket, ended, settings.revoke_seconds)
        refusal = await refused_command(witness, "thief-after-the-reuse")

        await send(witness, ECHO)
        still_open = await receive_until(witness, equal_to(ECHO))

    assert reused.status_code == 401
    assert "used before" in reused.json()["detail"]
    assert code == 4003
    assert refusal["code"] == "forbidden"
    assert await trips_of(db, owner.id) == 0
    await assert_token_refused(http, base_url, thief["access"])
    await assert_token_refused(http, base_url, owner.access)
    thiefs_refresh = await http.post("/api/token/refresh/", json={"refresh": thief["refresh"]})
    assert thiefs_refresh.status_code == 401
    # The owner's other session goes on.
    assert still_open == ECHO
    listed = await http.get(
        "/api/trip/", headers={"Authorization": f"Bearer {other_device['access']}"}
    )
    assert listed.status_code == 200


async def test_log_out_closes_the_sockets_of_that_session_and_only_those(
    http: httpx.AsyncClient, base_url: str, settings: Settings
) -> None:
    account = await create_account(http, "driver")
    other = await log_in(http, account, PASSWORD)
    async with (
        await connect(base_url, account.access) as leaving,
        await connect(base_url, other["access"]) as staying,
    ):
        logged_out = await http.post("/api/log_out/", json={"refresh": account.refresh})
        ended = time.monotonic()
        code = await closed_within(leaving, ended, settings.revoke_seconds)
        await send(staying, ECHO)
        echoed = await receive_until(staying, equal_to(ECHO))

    assert logged_out.status_code == 204
    assert code == 4003
    assert echoed == ECHO
    await assert_token_refused(http, base_url, account.access)
    listed = await http.get("/api/trip/", headers={"Authorization": f"Bearer {other['access']}"})
    assert listed.status_code == 200


async def test_a_token_without_a_session_id_is_refused_once_any_session_of_its_user_ends(
    http: httpx.AsyncClient, base_url: str, settings: Settings
) -> None:
    """Tokens from before tokens named their session cannot say which one they belong
    to: any session of their user that ends after they were issued ends them."""
    account = await create_account(http, "rider")
    tokens = TokenService(settings.jwt_secret, 600, 600)
    older = tokens.issue(User(**account.user), "access")  # no `sid`
    assert (
        await http.get("/api/trip/", headers={"Authorization": f"Bearer {older}"})
    ).status_code == 200

    async with await connect(base_url, older) as ws:
        await http.post("/api/log_out/", json={"refresh": account.refresh})
        code = await closed_within(ws, time.monotonic(), settings.revoke_seconds)

    assert code == 4003
    await assert_token_refused(http, base_url, older)
    # A token issued after that end (still without `sid`) is not refused for it.
    newer = tokens.issue(User(**account.user), "access")
    listed = await http.get("/api/trip/", headers={"Authorization": f"Bearer {newer}"})
    assert listed.status_code == 200, listed.text
