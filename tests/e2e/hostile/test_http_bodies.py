"""Hostile HTTP bodies and tokens, property-tested against the real gateway: every bad
body gets a 400 naming what was wrong (or 401, 413, 415 as the case is), never a 500;
names that are accepted are stored verbatim."""

from __future__ import annotations

import unicodedata
import uuid
from typing import Any
from urllib.parse import quote

import asyncpg
import httpx
import hypothesis
import orjson
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from gateway.web.signup import is_acceptable_username
from shared.settings import Settings
from tests.clients import Account
from tests.e2e.hostile.common import (
    MULTIPART_FILE,
    PROPERTY,
    SIGN_UP_FIELDS,
    SIGN_UP_FIELDS_AND_PHOTO,
    SQL_SHAPED,
    UNICODE_EDGES,
    EventLoopThread,
    as_text,
    exchange,
    json_non_objects,
    json_values,
    sql_or_unicode,
)
from tools.processes import ServiceProcess

# -- HTTP bodies --------------------------------------------------------------------------


def assert_field_errors(response: httpx.Response, allowed: set[str]) -> dict[str, list[str]]:
    """A 400 in the one error shape whose `fields` map field names to non-empty lists
    of messages."""
    assert response.status_code == 400, (response.status_code, response.text)
    assert response.headers["content-type"].startswith("application/json"), response.text
    body = response.json()
    assert set(body) == {"detail", "code", "fields"}, body
    assert body["code"] == "invalid_data" and body["detail"], body
    fields = body["fields"]
    assert isinstance(fields, dict) and fields, body
    assert set(fields) <= allowed, body
    for messages in fields.values():
        assert isinstance(messages, list) and messages, body
        assert all(isinstance(m, str) and m for m in messages), body
    return dict(fields)


async def _post(base_url: str, path: str, **kwargs: Any) -> httpx.Response:
    async with httpx.AsyncClient(base_url=base_url, timeout=10) as http:
        return await http.post(path, **kwargs)


field_values = (
    json_values
    | st.text(max_size=200)
    | st.sampled_from(["rider", "driver", "pAssw0rd!", *SQL_SHAPED, *UNICODE_EDGES])
    | st.text(min_size=151, max_size=400)
)


@PROPERTY
@given(
    body=st.fixed_dictionaries(
        {}, optional=dict.fromkeys(sorted(SIGN_UP_FIELDS_AND_PHOTO), field_values)
    ),
    extra=st.dictionaries(st.text(max_size=10), json_values, max_size=3),
)
@example(body={"username": None, "password1": 12345678, "group": ["rider"]}, extra={})
@example(body={"username": "x@example.com", "photo": "http://evil/x.png"}, extra={})
def test_sign_up_json_with_random_fields_is_refused_naming_them_or_created(
    loop: EventLoopThread, base_url: str, body: dict[str, Any], extra: dict[str, Any]
) -> None:
    response = loop.run(_post(base_url, "/api/sign_up/", json={**extra, **body}))

    if response.status_code == 201:
        user = response.json()
        assert user["username"] == body["username"].strip()
        assert user["group"] == body["group"]
    else:
        assert_field_errors(response, SIGN_UP_FIELDS_AND_PHOTO)


@PROPERTY
@given(
    body=st.dictionaries(
        st.sampled_from(sorted(SIGN_UP_FIELDS)) | st.text(max_size=12),
        st.text(max_size=200) | sql_or_unicode,
        max_size=10,
    ),
    encoding=st.sampled_from(["urlencoded", "multipart"]),
)
def test_sign_up_form_with_random_fields_is_refused_naming_them_or_created(
    loop: EventLoopThread, base_url: str, body: dict[str, str], encoding: str
) -> None:
    files = MULTIPART_FILE if encoding == "multipart" else None
    response = loop.run(_post(base_url, "/api/sign_up/", data=body, files=files))

    if response.status_code == 201:
        assert response.json()["username"] == body["username"].strip()
    else:
        assert_field_errors(response, SIGN_UP_FIELDS_AND_PHOTO)


@pytest.mark.parametrize("encoding", ["urlencoded", "multipart"])
def test_a_form_with_too_many_fields_gets_a_json_400(
    loop: EventLoopThread, base_url: str, encoding: str
) -> None:
    body = {f"field{n}": "x" for n in range(30)}
    files = MULTIPART_FILE if encoding == "multipart" else None

    response = loop.run(_post(base_url, "/api/sign_up/", data=body, files=files))

    assert response.status_code == 400
    assert response.headers["content-type"].startswith("application/json"), response.text
    assert "field" in response.json()["detail"]


@PROPERTY
@given(body=st.binary(max_size=300) | json_non_objects.map(orjson.dumps))
@example(body=b"{")
@example(body=b"[" * 5000)
@example(body=b'{"username": "\\ud800"}')
def test_sign_up_body_that_is_not_a_json_object_gets_a_400_saying_so(
    loop: EventLoopThread, base_url: str, body: bytes
) -> None:
    hypothesis.assume(body.strip() not in (b"", b"{}"))
    response = loop.run(
        _post(base_url, "/api/sign_up/", content=body, headers={"content-type": "application/json"})
    )

    assert response.status_code == 400, response.text
    detail = response.json()["detail"]
    assert "JSON" in detail


names = st.text(max_size=150).filter(lambda t: "\x00" not in t) | sql_or_unicode


@hypothesis.settings(PROPERTY, max_examples=12)
@given(
    username=names,
    first_name=names,
    last_name=names,
    password=st.text(min_size=8, max_size=64).filter(lambda t: "\x00" not in t),
    group=st.sampled_from(["rider", "driver"]),
    encoding=st.sampled_from(["json", "urlencoded", "multipart"]),
)
@example(
    username="'; DROP TABLE users; --",
    first_name="Robert'); DROP TABLE users;--",
    last_name="\u202e\U0001f695",
    password="' OR '1'='1",
    group="rider",
    encoding="json",
)
def test_signed_up_names_are_stored_verbatim_and_the_password_works(
    loop: EventLoopThread,
    base_url: str,
    settings: Settings,
    username: str,
    first_name: str,
    last_name: str,
    password: str,
    group: str,
    encoding: str,
) -> None:
    # The user name's own rules have a test of their own (below); here it only
    # needs to be new. The password keeps its hostile text, made uncommon.
    password = f"pw-{uuid.uuid4().hex[:6]}{password}"
    fields = {
        "username": f"u{uuid.uuid4().hex[:8]}@example.org",
        "first_name": first_name,
        "last_name": last_name,
        "password1": password,
        "password2": password,
        "group": group,
    }
    loop.run(_sign_up_and_log_in(base_url, settings, fields, encoding))


@hypothesis.settings(PROPERTY, max_examples=30)
@given(username=names)
@example(username="line\nbreak@example.org")
@example(username="zero\u200bwidth@example.org")
@example(username="\u202eevil@example.org")
@example(username="not an e-mail")
@example(username="cafe\u0301@example.org")
def test_a_user_name_is_refused_naming_the_rule_or_stored_in_its_nfkc_form(
    loop: EventLoopThread, base_url: str, username: str
) -> None:
    unique = f"{uuid.uuid4().hex[:8]}{username}"
    fields = {
        "username": unique,
        "password1": "a-Long-uncommon-pw",
        "password2": "a-Long-uncommon-pw",
        "group": "rider",
    }
    response = loop.run(_post(base_url, "/api/sign_up/", json=fields))

    stored = unicodedata.normalize("NFKC", unique).strip()
    if is_acceptable_username(stored):
        assert response.status_code == 201, response.text
        assert response.json()["username"] == stored
    else:
        assert "username" in assert_field_errors(response, {"username"})


async def _sign_up_and_log_in(
    base_url: str, settings: Settings, fields: dict[str, str], encoding: str
) -> None:
    async with httpx.AsyncClient(base_url=base_url, timeout=10) as http:
        if encoding == "json":
            response = await http.post("/api/sign_up/", json=fields)
        elif encoding == "urlencoded":
            response = await http.post("/api/sign_up/", data=fields)
        else:
            response = await http.post("/api/sign_up/", data=fields, files=MULTIPART_FILE)
        assert response.status_code == 201, response.text
        user = response.json()
        assert user["username"] == fields["username"].strip()
        assert user["first_name"] == fields["first_name"]
        assert user["last_name"] == fields["last_name"]

        logged_in = await http.post(
            "/api/log_in/", json={"username": user["username"], "password": fields["password1"]}
        )
        assert logged_in.status_code == 200, logged_in.text

    connection = await asyncpg.connect(settings.database_url)
    try:
        row = await connection.fetchrow(
            "SELECT username, first_name, last_name, user_group FROM users WHERE id = $1",
            user["id"],
        )
    finally:
        await connection.close()
    assert row is not None
    assert dict(row) == {
        "username": fields["username"].strip(),
        "first_name": fields["first_name"],
        "last_name": fields["last_name"],
        "user_group": fields["group"],
    }


@PROPERTY
@given(
    path=st.sampled_from(["/api/log_in/", "/api/token/refresh/"]),
    body=st.dictionaries(
        st.sampled_from(["username", "password", "refresh"]) | st.text(max_size=8),
        field_values,
        max_size=4,
    ),
)
@example(path="/api/log_in/", body={"username": "' OR '1'='1' --", "password": "' OR '1'='1"})
@example(path="/api/log_in/", body={"username": "a\x00b", "password": "pAssw0rd!"})
@example(path="/api/token/refresh/", body={"refresh": "' OR 1=1 --"})
@example(path="/api/token/refresh/", body={"refresh": "a.b.c"})
def test_log_in_and_refresh_with_random_bodies_are_refused_with_400_or_401(
    loop: EventLoopThread, base_url: str, path: str, body: dict[str, Any]
) -> None:
    response = loop.run(_post(base_url, path, json=body))

    assert response.status_code in (400, 401), (response.status_code, response.text)
    answer = response.json()
    if response.status_code == 400:
        assert_field_errors(response, {"username", "password", "refresh"})
    else:
        assert isinstance(answer["detail"], str) and answer["detail"]


def test_sign_up_json_body_over_64_kib_gets_413_saying_so(
    loop: EventLoopThread, base_url: str
) -> None:
    body = {"username": "big@example.com", "first_name": "x" * (64 * 1024)}

    response = loop.run(_post(base_url, "/api/sign_up/", json=body))

    assert response.status_code == 413, response.text
    assert "bytes" in response.json()["detail"]


@pytest.mark.parametrize("content_type", ["text/plain", "application/xml", "image/png"])
def test_sign_up_in_an_unsupported_content_type_gets_415_saying_so(
    loop: EventLoopThread, base_url: str, content_type: str
) -> None:
    headers = {"content-type": content_type}
    response = loop.run(_post(base_url, "/api/sign_up/", content=b"username=x", headers=headers))

    assert response.status_code == 415, response.text
    assert "JSON" in response.json()["detail"]


@PROPERTY
@given(trip_id=(st.text(min_size=1, max_size=100) | sql_or_unicode).filter(lambda t: t.strip(".")))
@example(trip_id="' OR 1=1 --")
@example(trip_id="00000000-0000-0000-0000-000000000000")
def test_a_trip_id_that_names_no_trip_of_the_user_gets_404(
    loop: EventLoopThread, base_url: str, rider: Account, trip_id: str
) -> None:
    async def get() -> httpx.Response:
        async with httpx.AsyncClient(base_url=base_url, timeout=10) as http:
            return await http.get(
                f"/api/trip/{quote(trip_id, safe='')}/",
                headers={"Authorization": f"Bearer {rider.access}"},
            )

    response = loop.run(get())

    assert response.status_code == 404, response.text


# -- Tokens that are not tokens -------------------------------------------------------------


def assert_token_refused(response: httpx.Response, token: str) -> None:
    assert response.status_code == 401, response.text
    body = response.json()
    assert body["code"] == "token_not_valid", body
    assert isinstance(body["detail"], str) and body["detail"], body
    # Anything long enough to be a secret is not repeated back (short garbage may
    # match the message's own words by chance).
    if len(token) >= 12:
        assert token not in body["detail"], body


async def _handshake_status(base_url: str, token: str) -> httpx.Response:
    """The gateway's answer to a handshake with `token` (percent-encoded into the URL)."""
    url = f"{base_url}/taxi/?token={quote(token, safe='')}"
    headers = {
        "connection": "upgrade",
        "upgrade": "websocket",
        "sec-websocket-version": "13",
        "sec-websocket-key": "dGhlIHNhbXBsZSBub25jZQ==",
    }
    async with httpx.AsyncClient(timeout=10) as http:
        return await http.get(url, headers=headers)


@PROPERTY
@given(token=st.text(min_size=1, max_size=300) | sql_or_unicode)
@example(token="a.b.c")
@example(token="eyJhbGciOiJub25lIn0.e30.")
@example(token="..")
def test_a_handshake_with_garbage_for_a_token_gets_401_without_echoing_it(
    loop: EventLoopThread, base_url: str, token: str
) -> None:
    response = loop.run(_handshake_status(base_url, token))

    assert_token_refused(response, token)


@PROPERTY
@given(token=st.text(alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1))
@example(token="' OR '1'='1")
def test_an_api_call_with_garbage_for_a_bearer_token_gets_401_without_echoing_it(
    loop: EventLoopThread, base_url: str, token: str
) -> None:
    async def call() -> httpx.Response:
        async with httpx.AsyncClient(base_url=base_url, timeout=10) as http:
            return await http.get("/api/trip/", headers={"Authorization": f"Bearer {token}"})

    response = loop.run(call())

    assert_token_refused(response, token)


# -- Everyone survived ---------------------------------------------------------------------


def test_the_gateway_and_the_dispatchers_are_still_up_after_all_of_the_above(
    loop: EventLoopThread,
    base_url: str,
    rider: Account,
    gateway_process: tuple[ServiceProcess, str],
    dispatchers: list[ServiceProcess],
) -> None:
    assert gateway_process[0].poll() is None, gateway_process[0].log()
    for worker in dispatchers:
        assert worker.poll() is None, worker.log()
    assert httpx.get(f"{base_url}/readyz", timeout=5).status_code == 200
    answer = exchange(loop, base_url, rider, as_text({"type": "echo.message", "data": "bye"}))
    assert answer == {"type": "echo.message", "data": "bye"}
