"""Tokens the gateway must refuse, at the WebSocket handshake and on the HTTP API.

A refused handshake is an HTTP 401 before the upgrade; a refused API call is a 401
with `code: token_not_valid`. Either way the body says why without echoing the
token. (tests/unit/test_tokens.py covers the same tokens against TokenService;
tests/e2e/test_websocket.py covers the expired, forged, refresh and inactive cases
at the handshake.)
"""

from __future__ import annotations

import base64
import time
import uuid
import warnings
from typing import Any

import asyncpg
import httpx
import jwt
import orjson
import pytest
import websockets
from jwt.warnings import InsecureKeyLengthWarning
from websockets.exceptions import InvalidStatus

from gateway.tokens import TokenService
from shared.settings import Settings
from shared.users import User
from tests.clients import SUBPROTOCOLS, Account, create_account, ws_url

OTHER_SECRET = "another-secret-that-is-long-enough-to-sign-with-hs256"


def claims(account: Account, **changes: Any) -> dict[str, Any]:
    """The claims the gateway itself would put in `account`'s access token, then `changes`."""
    now = int(time.time())
    payload = {
        **account.user,
        "token_type": "access",
        "exp": now + 600,
        "iat": now,
        "jti": uuid.uuid4().hex,
    }
    payload.update(changes)
    return payload


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def not_yet_valid(account: Account, settings: Settings) -> str:
    nbf = int(time.time()) + 3600
    return jwt.encode(claims(account, nbf=nbf), settings.jwt_secret, algorithm="HS256")


def issued_in_the_future(account: Account, settings: Settings) -> str:
    in_two_hours = TokenService(settings.jwt_secret, 3600, 3600, clock=lambda: time.time() + 7200)
    return in_two_hours.issue(User(**account.user), "access")


def expired(account: Account, settings: Settings) -> str:
    two_hours_ago = TokenService(settings.jwt_secret, 3600, 3600, clock=lambda: time.time() - 7200)
    return two_hours_ago.issue(User(**account.user), "access")


def unsigned(account: Account) -> str:
    return jwt.encode(claims(account), None, algorithm="none")


def handmade_alg_none(account: Account, alg: str) -> str:
    header = b64(orjson.dumps({"alg": alg, "typ": "JWT"}))
    return f"{header}.{b64(orjson.dumps(claims(account)))}."


def hs512(account: Account, settings: Settings) -> str:
    with warnings.catch_warnings():
        # PyJWT would like a longer key for SHA-512; the gateway's key is the point here.
        warnings.simplefilter("ignore", InsecureKeyLengthWarning)
        token = jwt.encode(claims(account), settings.jwt_secret, algorithm="HS512")
        # The same secret: only the pinned algorithm stands between this token and the API.
        assert jwt.decode(token, settings.jwt_secret, algorithms=["HS512"])["id"] == account.id
    return token


def signed_with_another_secret(account: Account) -> str:
    return jwt.encode(claims(account), OTHER_SECRET, algorithm="HS256")


def with_a_changed_payload(account: Account, settings: Settings) -> str:
    header, _, signature = jwt.encode(
        claims(account), settings.jwt_secret, algorithm="HS256"
    ).split(".")
    promoted = b64(orjson.dumps(claims(account, group="driver")))
    return f"{header}.{promoted}.{signature}"


async def refused_handshake(base_url: str, token: str) -> dict[str, Any]:
    """Connect with `token`; the 401 refusal's body, failing if the socket opened."""
    with pytest.raises(InvalidStatus) as refused:
        async with websockets.connect(
            ws_url(base_url, token), open_timeout=10, subprotocols=SUBPROTOCOLS
        ):
            pass
    response = refused.value.response
    assert response.status_code == 401, response
    return check_refusal(orjson.loads(response.body), token)


async def refused_api_call(http: httpx.AsyncClient, token: str) -> dict[str, Any]:
    response = await http.get("/api/trip/", headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 401, response.text
    return check_refusal(response.json(), token)


def check_refusal(body: dict[str, Any], token: str) -> dict[str, Any]:
    assert body["code"] == "token_not_valid", body
    assert isinstance(body["detail"], str) and body["detail"], body
    assert token not in body["detail"], body
    return body


async def delete_user(db: asyncpg.Connection, account: Account) -> None:
    deleted = await db.execute("DELETE FROM users WHERE id = $1", account.id)
    assert deleted == "DELETE 1"


async def assert_api_accepts(http: httpx.AsyncClient, account: Account) -> None:
    """The control: the user's own access token works, so a refusal is the token's doing."""
    response = await http.get("/api/trip/", headers={"Authorization": f"Bearer {account.access}"})
    assert response.status_code == 200, response.text


# -- WebSocket handshake ---------------------------------------------------------------------


async def test_handshake_refuses_a_token_not_valid_yet(
    http: httpx.AsyncClient, base_url: str, settings: Settings
) -> None:
    rider = await create_account(http, "rider")

    body = await refused_handshake(base_url, not_yet_valid(rider, settings))

    assert "not valid yet" in body["detail"]


async def test_handshake_refuses_a_token_issued_in_the_future(
    http: httpx.AsyncClient, base_url: str, settings: Settings
) -> None:
    rider = await create_account(http, "rider")

    body = await refused_handshake(base_url, issued_in_the_future(rider, settings))

    assert "not valid yet" in body["detail"]


async def test_handshake_refuses_an_unsigned_alg_none_token(
    http: httpx.AsyncClient, base_url: str
) -> None:
    rider = await create_account(http, "rider")

    body = await refused_handshake(base_url, unsigned(rider))

    assert "invalid" in body["detail"]


@pytest.mark.parametrize("alg", ["None", "NONE", "nOnE"])
async def test_handshake_refuses_a_handmade_alg_none_token(
    http: httpx.AsyncClient, base_url: str, alg: str
) -> None:
    rider = await create_account(http, "rider")

    body = await refused_handshake(base_url, handmade_alg_none(rider, alg))

    assert "invalid" in body["detail"]


async def test_handshake_refuses_an_hs512_token_signed_with_the_real_secret(
    http: httpx.AsyncClient, base_url: str, settings: Settings
) -> None:
    rider = await create_account(http, "rider")

    body = await refused_handshake(base_url, hs512(rider, settings))

    assert "invalid" in body["detail"]


async def test_handshake_refuses_a_token_whose_payload_was_changed(
    http: httpx.AsyncClient, base_url: str, settings: Settings
) -> None:
    rider = await create_account(http, "rider")

    body = await refused_handshake(base_url, with_a_changed_payload(rider, settings))

    assert "invalid" in body["detail"]


async def test_handshake_refuses_the_token_of_a_deleted_user(
    http: httpx.AsyncClient, base_url: str, db: asyncpg.Connection
) -> None:
    rider = await create_account(http, "rider")
    await assert_api_accepts(http, rider)
    await delete_user(db, rider)

    body = await refused_handshake(base_url, rider.access)

    assert body["detail"] == "this account does not exist or is no longer active"


# -- HTTP API: GET /api/trip/ with a Bearer token --------------------------------------------


async def test_api_refuses_an_expired_token(http: httpx.AsyncClient, settings: Settings) -> None:
    rider = await create_account(http, "rider")

    body = await refused_api_call(http, expired(rider, settings))

    assert "expired" in body["detail"]


async def test_api_refuses_a_token_not_valid_yet(
    http: httpx.AsyncClient, settings: Settings
) -> None:
    rider = await create_account(http, "rider")

    body = await refused_api_call(http, not_yet_valid(rider, settings))

    assert "not valid yet" in body["detail"]


async def test_api_refuses_a_token_issued_in_the_future(
    http: httpx.AsyncClient, settings: Settings
) -> None:
    rider = await create_account(http, "rider")

    body = await refused_api_call(http, issued_in_the_future(rider, settings))

    assert "not valid yet" in body["detail"]


async def test_api_refuses_a_token_signed_with_another_secret(http: httpx.AsyncClient) -> None:
    rider = await create_account(http, "rider")

    body = await refused_api_call(http, signed_with_another_secret(rider))

    assert "invalid" in body["detail"]


async def test_api_refuses_a_token_whose_payload_was_changed(
    http: httpx.AsyncClient, settings: Settings
) -> None:
    rider = await create_account(http, "rider")

    body = await refused_api_call(http, with_a_changed_payload(rider, settings))

    assert "invalid" in body["detail"]


async def test_api_refuses_an_unsigned_alg_none_token(http: httpx.AsyncClient) -> None:
    rider = await create_account(http, "rider")

    body = await refused_api_call(http, unsigned(rider))

    assert "invalid" in body["detail"]


@pytest.mark.parametrize("alg", ["None", "NONE", "nOnE"])
async def test_api_refuses_a_handmade_alg_none_token(http: httpx.AsyncClient, alg: str) -> None:
    rider = await create_account(http, "rider")

    body = await refused_api_call(http, handmade_alg_none(rider, alg))

    assert "invalid" in body["detail"]


async def test_api_refuses_an_hs512_token_signed_with_the_real_secret(
    http: httpx.AsyncClient, settings: Settings
) -> None:
    rider = await create_account(http, "rider")

    body = await refused_api_call(http, hs512(rider, settings))

    assert "invalid" in body["detail"]


async def test_api_refuses_a_refresh_token_as_access(http: httpx.AsyncClient) -> None:
    rider = await create_account(http, "rider")

    body = await refused_api_call(http, rider.refresh)

    assert body["detail"] == "this is a refresh token; send an access token"


async def test_api_refuses_the_token_of_a_deleted_user(
    http: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    rider = await create_account(http, "rider")
    await assert_api_accepts(http, rider)
    await delete_user(db, rider)

    body = await refused_api_call(http, rider.access)

    assert body["detail"] == "this account does not exist or is no longer active"


async def test_api_refuses_the_token_of_a_deactivated_user(
    http: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    rider = await create_account(http, "rider")
    await assert_api_accepts(http, rider)
    await db.execute("UPDATE users SET is_active = false WHERE id = $1", rider.id)

    body = await refused_api_call(http, rider.access)

    assert body["detail"] == "this account does not exist or is no longer active"


# -- HTTP API: refreshing a token ------------------------------------------------------------


async def test_refresh_refuses_the_refresh_token_of_a_deleted_user(
    http: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    rider = await create_account(http, "rider")
    await delete_user(db, rider)

    response = await http.post("/api/token/refresh/", json={"refresh": rider.refresh})

    assert response.status_code == 401, response.text
    assert (
        check_refusal(response.json(), rider.refresh)["detail"]
        == "this account does not exist or is no longer active"
    )


async def test_refresh_refuses_an_unsigned_alg_none_refresh_token(
    http: httpx.AsyncClient,
) -> None:
    rider = await create_account(http, "rider")
    token = jwt.encode(claims(rider, token_type="refresh"), None, algorithm="none")

    response = await http.post("/api/token/refresh/", json={"refresh": token})

    assert response.status_code == 401, response.text
    assert "invalid" in check_refusal(response.json(), token)["detail"]
