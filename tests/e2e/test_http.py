"""PROTOCOL.md part A, HTTP: sign up, log in and refresh, and the trip list's pages
(part C4), against a real uvicorn gateway."""

from __future__ import annotations

import base64
import io
import re
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import httpx
import jwt
import pytest
from PIL import Image

from gateway.tokens import TokenService
from shared.settings import Settings
from shared.users import User
from tests.clients import PASSWORD, Account, create_account, new_username, sign_up

USER_FIELDS = {"id", "username", "first_name", "last_name", "group", "photo"}
# `sid` names the session the token belongs to (ended sessions refuse their tokens).
TOKEN_CLAIMS = USER_FIELDS | {"token_type", "exp", "iat", "jti", "sid"}

# The smallest valid PNG: one transparent pixel.
TINY_PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kg"
    "AAAABJRU5ErkJggg=="
)


def pixels(content: bytes) -> tuple[tuple[int, int], list[Any]]:
    image = Image.open(io.BytesIO(content)).convert("RGBA")
    return image.size, list(image.tobytes())


def sign_up_form(group: str = "rider", **changes: str) -> dict[str, str]:
    form = {
        "username": new_username(group),
        "first_name": "Ann",
        "last_name": "Lee",
        "password1": PASSWORD,
        "password2": PASSWORD,
        "group": group,
    }
    form.update(changes)
    return form


def decode(token: str, settings: Settings) -> dict[str, Any]:
    return dict(jwt.decode(token, settings.jwt_secret, algorithms=["HS256"]))


def token_service(settings: Settings) -> TokenService:
    return TokenService(
        settings.jwt_secret,
        settings.access_token_minutes * 60,
        settings.refresh_token_days * 24 * 3600,
    )


async def log_in(
    http: httpx.AsyncClient, username: str, password: str = PASSWORD
) -> httpx.Response:
    return await http.post("/api/log_in/", json={"username": username, "password": password})


# Sign up


async def test_sign_up_with_a_form_returns_the_user(http: httpx.AsyncClient) -> None:
    form = sign_up_form("driver")

    # Every field as a multipart part, as the course's browser client sends them.
    multipart = {name: (None, value) for name, value in form.items()}

    response = await http.post("/api/sign_up/", files=multipart)

    assert response.request.headers["content-type"].startswith("multipart/form-data")

    assert response.status_code == 201, response.text
    assert response.headers["content-type"].startswith("application/json")
    user = response.json()
    assert set(user) == USER_FIELDS
    assert isinstance(user["id"], int)
    assert user["username"] == form["username"]
    assert user["first_name"] == "Ann"
    assert user["last_name"] == "Lee"
    assert user["group"] == "driver"
    assert user["photo"] is None


async def test_sign_up_stores_a_password_hash_not_the_password(
    http: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    user = await sign_up(http, "rider")

    stored = await db.fetchval("SELECT password_hash FROM users WHERE id = $1", user["id"])

    assert PASSWORD not in stored
    assert stored.startswith("$argon2id$")


async def test_sign_up_with_a_png_photo_serves_the_photo(http: httpx.AsyncClient) -> None:
    response = await http.post(
        "/api/sign_up/",
        data=sign_up_form(),
        files={"photo": ("me.png", TINY_PNG, "image/png")},
    )

    assert response.status_code == 201, response.text
    photo = response.json()["photo"]
    assert photo.startswith("/media/photos/")
    assert photo.endswith(".png")

    served = await http.get(photo)
    assert served.status_code == 200
    # Re-encoded (no metadata survives): the same pixel, not the same bytes.
    assert pixels(served.content) == pixels(TINY_PNG)
    assert served.headers["content-type"] == "image/png"


async def test_two_users_uploading_the_same_file_name_keep_their_own_photos(
    http: httpx.AsyncClient,
) -> None:
    photos = []
    for content in (TINY_PNG, TINY_PNG + b"\x00second"):
        response = await http.post(
            "/api/sign_up/",
            data=sign_up_form(),
            files={"photo": ("me.png", content, "image/png")},
        )
        assert response.status_code == 201, response.text
        photos.append((response.json()["photo"], content))

    assert photos[0][0] != photos[1][0]
    for path, content in photos:
        assert pixels((await http.get(path)).content) == pixels(content)


async def test_a_photo_that_is_not_an_image_is_refused(http: httpx.AsyncClient) -> None:
    response = await http.post(
        "/api/sign_up/",
        data=sign_up_form(),
        files={"photo": ("page.html", b"<script>alert(1)</script>", "text/html")},
    )

    assert response.status_code == 400
    assert set(response.json()["fields"]) == {"photo"}


async def test_sign_up_with_json_works(http: httpx.AsyncClient) -> None:
    form = sign_up_form("rider", first_name="Zoë", last_name="O'Brien")

    response = await http.post("/api/sign_up/", json=form)

    assert response.status_code == 201, response.text
    user = response.json()
    assert set(user) == USER_FIELDS
    assert (user["username"], user["first_name"], user["last_name"]) == (
        form["username"],
        "Zoë",
        "O'Brien",
    )
    assert user["group"] == "rider"
    assert (await log_in(http, form["username"])).status_code == 200


async def test_sign_up_with_a_urlencoded_form_works(http: httpx.AsyncClient) -> None:
    response = await http.post("/api/sign_up/", data=sign_up_form())

    assert response.status_code == 201, response.text


@pytest.mark.parametrize("spelling", [str, str.upper, str.title])
async def test_a_taken_username_is_refused_naming_username(
    http: httpx.AsyncClient, spelling: Any
) -> None:
    first = await sign_up(http, "rider")

    response = await http.post(
        "/api/sign_up/", data=sign_up_form("driver", username=spelling(first["username"]))
    )

    assert response.status_code == 400
    assert set(response.json()["fields"]) == {"username"}
    assert "exists" in response.json()["fields"]["username"][0]


async def test_mismatched_passwords_are_refused_naming_password2(
    http: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    form = sign_up_form(password2=PASSWORD + "x")

    response = await http.post("/api/sign_up/", data=form)

    assert response.status_code == 400
    assert set(response.json()["fields"]) == {"password2"}
    assert (
        await db.fetchval("SELECT count(*) FROM users WHERE username = $1", form["username"]) == 0
    )


async def test_missing_fields_are_each_named(http: httpx.AsyncClient) -> None:
    response = await http.post("/api/sign_up/", data={"first_name": "Ann"})

    assert response.status_code == 400
    errors = response.json()["fields"]
    assert set(errors) == {"username", "password1", "password2", "group"}
    assert all(messages == ["This field is required."] for messages in errors.values())


async def test_an_empty_json_body_names_every_required_field(http: httpx.AsyncClient) -> None:
    response = await http.post("/api/sign_up/", json={})

    assert response.status_code == 400
    assert set(response.json()["fields"]) == {"username", "password1", "password2", "group"}


async def test_a_bad_group_is_refused(http: httpx.AsyncClient) -> None:
    response = await http.post("/api/sign_up/", data=sign_up_form(group="admin"))

    assert response.status_code == 400
    assert set(response.json()["fields"]) == {"group"}


async def test_a_photo_in_a_json_body_is_refused(http: httpx.AsyncClient) -> None:
    response = await http.post("/api/sign_up/", json={**sign_up_form(), "photo": "/etc/passwd"})

    assert response.status_code == 400
    assert set(response.json()["fields"]) == {"photo"}


@pytest.mark.parametrize("path", ["/api/sign_up/", "/api/log_in/", "/api/token/refresh/"])
async def test_a_body_that_is_not_json_is_refused_with_a_detail(
    http: httpx.AsyncClient, path: str
) -> None:
    response = await http.post(
        path, content=b'{"username": ', headers={"content-type": "application/json"}
    )

    assert response.status_code == 400
    assert "JSON" in response.json()["detail"]


@pytest.mark.parametrize("body", [b"[]", b'["username"]', b'"text"', b"42", b"null"])
@pytest.mark.parametrize("path", ["/api/sign_up/", "/api/log_in/", "/api/token/refresh/"])
async def test_a_json_body_that_is_not_an_object_is_refused(
    http: httpx.AsyncClient, path: str, body: bytes
) -> None:
    response = await http.post(path, content=body, headers={"content-type": "application/json"})

    assert response.status_code == 400
    assert response.json() == {"detail": "the body must be a JSON object", "code": "invalid_data"}


# Log in


async def test_log_in_returns_an_access_and_a_refresh_token(
    http: httpx.AsyncClient, settings: Settings
) -> None:
    user = await sign_up(http, "driver", first_name="Dee", last_name="River")
    before = int(time.time())

    response = await log_in(http, user["username"])

    assert response.status_code == 200, response.text
    tokens = response.json()
    assert set(tokens) == {"access", "refresh"}
    access, refresh = decode(tokens["access"], settings), decode(tokens["refresh"], settings)
    for payload, token_type in ((access, "access"), (refresh, "refresh")):
        assert set(payload) == TOKEN_CLAIMS
        assert payload["token_type"] == token_type
        assert {name: payload[name] for name in USER_FIELDS} == user
        # To the microsecond: a token issued just after the user's sessions ended, in
        # the same second, stays valid.
        assert before <= payload["iat"] <= time.time()
    assert access["exp"] - int(access["iat"]) == 60 * 60
    assert refresh["exp"] - int(refresh["iat"]) == 24 * 60 * 60
    assert access["jti"] != refresh["jti"]


async def test_the_access_token_carries_the_photo(
    http: httpx.AsyncClient, settings: Settings
) -> None:
    form = sign_up_form()
    signed_up = await http.post(
        "/api/sign_up/", data=form, files={"photo": ("me.png", TINY_PNG, "image/png")}
    )
    assert signed_up.status_code == 201, signed_up.text

    response = await log_in(http, form["username"])

    assert decode(response.json()["access"], settings)["photo"] == signed_up.json()["photo"]


async def test_log_in_with_a_form_works(http: httpx.AsyncClient) -> None:
    user = await sign_up(http, "rider")

    response = await http.post(
        "/api/log_in/", data={"username": user["username"], "password": PASSWORD}
    )

    assert response.status_code == 200, response.text
    assert set(response.json()) == {"access", "refresh"}


async def test_the_username_is_not_case_sensitive_at_log_in(http: httpx.AsyncClient) -> None:
    user = await sign_up(http, "rider")

    response = await log_in(http, user["username"].upper())

    assert response.status_code == 200, response.text


async def test_a_wrong_password_is_refused_with_401(http: httpx.AsyncClient) -> None:
    user = await sign_up(http, "rider")

    for password in (PASSWORD + "x", PASSWORD.upper(), PASSWORD[:-1]):
        response = await log_in(http, user["username"], password)

        assert response.status_code == 401
        assert "access" not in response.json()
        assert response.json()["detail"]


async def test_an_unknown_user_is_refused_with_401_like_a_wrong_password(
    http: httpx.AsyncClient,
) -> None:
    user = await sign_up(http, "rider")
    wrong_password = await log_in(http, user["username"], "not-the-password")

    unknown = await log_in(http, new_username("nobody"))

    assert unknown.status_code == 401
    # The answer does not reveal whether the username exists.
    assert unknown.json() == wrong_password.json()


async def test_a_username_with_a_nul_character_is_an_unknown_user(base_url: str) -> None:
    # A client of its own: the gateway closes the connection after a 500.
    async with httpx.AsyncClient(base_url=base_url, timeout=10) as http:
        response = await log_in(http, "ann\x00@example.com")

    assert response.status_code == 401


async def test_log_in_without_credentials_names_the_missing_fields(
    http: httpx.AsyncClient,
) -> None:
    response = await http.post("/api/log_in/", json={})

    assert response.status_code == 400
    assert set(response.json()["fields"]) == {"username", "password"}


async def test_log_in_with_non_string_credentials_is_refused(http: httpx.AsyncClient) -> None:
    response = await http.post("/api/log_in/", json={"username": ["a"], "password": 12345678})

    assert response.status_code == 400
    assert set(response.json()["fields"]) == {"username", "password"}


async def test_an_inactive_user_can_neither_log_in_nor_refresh(
    http: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    account = await create_account(http, "rider")

    await db.execute("UPDATE users SET is_active = false WHERE id = $1", account.id)

    logged_in = await log_in(http, account.user["username"])
    assert logged_in.status_code == 401
    assert "access" not in logged_in.json()

    refreshed = await http.post("/api/token/refresh/", json={"refresh": account.refresh})
    assert refreshed.status_code == 401
    assert refreshed.json()["code"] == "token_not_valid"
    assert "access" not in refreshed.json()


# Refresh


async def test_refresh_returns_a_new_access_token_that_verifies(
    http: httpx.AsyncClient, settings: Settings
) -> None:
    account = await create_account(http, "driver")

    response = await http.post("/api/token/refresh/", json={"refresh": account.refresh})

    assert response.status_code == 200, response.text
    # With the session's next refresh token: the one sent is spent.
    assert set(response.json()) == {"access", "refresh"}
    access = response.json()["access"]
    claims = token_service(settings).verify(access, "access")
    assert claims.user_id == account.id
    assert claims.group == "driver"
    payload = decode(access, settings)
    assert set(payload) == TOKEN_CLAIMS
    assert payload["token_type"] == "access"
    assert {name: payload[name] for name in USER_FIELDS} == account.user
    assert payload["jti"] != decode(account.access, settings)["jti"]


async def test_refresh_with_a_form_works(http: httpx.AsyncClient) -> None:
    account = await create_account(http, "rider")

    response = await http.post("/api/token/refresh/", data={"refresh": account.refresh})

    assert response.status_code == 200, response.text


async def test_a_refreshed_token_reflects_the_user_as_they_are_now(
    http: httpx.AsyncClient, db: asyncpg.Connection, settings: Settings
) -> None:
    account = await create_account(http, "rider")
    await db.execute("UPDATE users SET first_name = 'Renamed' WHERE id = $1", account.id)

    response = await http.post("/api/token/refresh/", json={"refresh": account.refresh})

    assert response.status_code == 200, response.text
    assert decode(response.json()["access"], settings)["first_name"] == "Renamed"


async def test_refreshing_with_an_access_token_is_refused_with_401(
    http: httpx.AsyncClient,
) -> None:
    account = await create_account(http, "rider")

    response = await http.post("/api/token/refresh/", json={"refresh": account.access})

    assert response.status_code == 401
    assert response.json()["code"] == "token_not_valid"
    assert "this is an access token; send a refresh token" in response.json()["detail"]


@pytest.mark.parametrize(
    "garbage", ["garbage", "abc.def.ghi", "eyJhbGciOiJIUzI1NiJ9.e30.c2lnbmF0dXJl"]
)
async def test_refreshing_with_garbage_is_refused_with_401(
    http: httpx.AsyncClient, garbage: str
) -> None:
    response = await http.post("/api/token/refresh/", json={"refresh": garbage})

    assert response.status_code == 401
    assert response.json()["code"] == "token_not_valid"
    assert garbage not in response.json()["detail"]


async def test_refreshing_with_an_expired_refresh_token_is_refused_with_401(
    http: httpx.AsyncClient, settings: Settings
) -> None:
    account = await create_account(http, "rider")
    two_days_ago = TokenService(
        settings.jwt_secret, 60, 24 * 3600, clock=lambda: time.time() - 2 * 24 * 3600
    )

    expired = two_days_ago.issue(User(**account.user), "refresh")
    response = await http.post("/api/token/refresh/", json={"refresh": expired})

    assert response.status_code == 401
    assert "expired" in response.json()["detail"]


async def test_refreshing_with_a_forged_refresh_token_is_refused_with_401(
    http: httpx.AsyncClient,
) -> None:
    account = await create_account(http, "rider")
    forger = TokenService("another-secret-that-is-long-enough-to-sign", 60, 3600)

    forged = forger.issue(User(**account.user), "refresh")
    response = await http.post("/api/token/refresh/", json={"refresh": forged})

    assert response.status_code == 401


async def test_refreshing_for_a_user_that_does_not_exist_is_refused_with_401(
    http: httpx.AsyncClient, settings: Settings
) -> None:
    ghost = User(
        id=2**62, username="ghost@x.com", first_name="", last_name="", group="rider", photo=None
    )

    refresh = token_service(settings).issue(ghost, "refresh")
    response = await http.post("/api/token/refresh/", json={"refresh": refresh})

    assert response.status_code == 401
    assert response.json()["code"] == "token_not_valid"


async def test_refresh_without_a_token_names_the_field(http: httpx.AsyncClient) -> None:
    response = await http.post("/api/token/refresh/", json={})

    assert response.status_code == 400
    assert set(response.json()["fields"]) == {"refresh"}


# Trips: GET /api/trip/ pages through what the user may see (PROTOCOL C4, C2)

PAGE_LIMIT = 100
LINK_NEXT = re.compile(r'<(?P<url>[^>]+)>; rel="next"')


def bearer(account: Account) -> dict[str, str]:
    return {"Authorization": f"Bearer {account.access}"}


async def insert_user(db: asyncpg.Connection, group: str) -> int:
    user_id: int = await db.fetchval(
        "INSERT INTO users (username, password_hash, user_group) VALUES ($1, 'x', $2) RETURNING id",
        new_username(group),
        group,
    )
    return user_id


async def insert_trip(
    db: asyncpg.Connection,
    rider_id: int,
    created: datetime,
    status: str = "CANCELLED",
    driver_id: int | None = None,
) -> str:
    """A trip as the dispatcher would have left it, written directly, dated `created`."""
    changes = {"REQUESTED": 1, "STARTED": 2, "IN_PROGRESS": 3, "COMPLETED": 4}
    version = changes.get(status, 3 if driver_id else 2)
    cancel_reason = "rider" if status == "CANCELLED" else None
    trip_id: uuid.UUID = await db.fetchval(
        """
        INSERT INTO trips (created, updated, pick_up_address, drop_off_address, status,
                           rider_id, driver_id, version, cancel_reason)
        VALUES ($1, $1, 'A', 'B', $2, $3, $4, $5, $6) RETURNING id
        """,
        created,
        status,
        rider_id,
        driver_id,
        version,
        cancel_reason,
    )
    return str(trip_id)


def next_url(response: httpx.Response) -> str | None:
    link = response.headers.get("link")
    if link is None:
        return None
    match = LINK_NEXT.fullmatch(link)
    assert match, link
    return match["url"]


async def every_page(
    http: httpx.AsyncClient, account: Account, url: str
) -> list[list[dict[str, Any]]]:
    """The pages from `url` on, following each `Link: rel="next"` to the end."""
    pages = []
    next_page: str | None = url
    while next_page is not None:
        response = await http.get(next_page, headers=bearer(account))
        assert response.status_code == 200, response.text
        assert isinstance(response.json(), list)
        pages.append(response.json())
        next_page = next_url(response)
    return pages


def ids(trips: list[dict[str, Any]]) -> list[str]:
    return [trip["id"] for trip in trips]


async def test_the_trip_list_without_parameters_is_the_newest_100_and_links_the_rest(
    http: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    rider = await create_account(http, "rider")
    start = datetime.now(UTC) - timedelta(days=1)
    trips = [await insert_trip(db, rider.id, start + timedelta(seconds=n)) for n in range(105)]

    first = await http.get("/api/trip/", headers=bearer(rider))

    assert first.status_code == 200, first.text
    assert ids(first.json()) == trips[::-1][:PAGE_LIMIT]
    link = next_url(first)
    assert link is not None and link.startswith("/api/trip/?")
    assert [ids(page) for page in await every_page(http, rider, link)] == [trips[4::-1]]


async def test_pages_walk_every_trip_once_newest_first_ties_broken_by_id(
    http: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    rider = await create_account(http, "rider")
    moment = datetime.now(UTC) - timedelta(hours=1)
    # Four trips created in the same microsecond: the page boundary falls among them.
    same_moment = [await insert_trip(db, rider.id, moment) for _ in range(4)]
    older = [await insert_trip(db, rider.id, moment - timedelta(minutes=n)) for n in (1, 2, 3)]

    pages = await every_page(http, rider, "/api/trip/?limit=3")

    assert [len(page) for page in pages] == [3, 3, 1]
    listed = [trip_id for page in pages for trip_id in ids(page)]
    assert listed == sorted(same_moment, key=uuid.UUID, reverse=True) + older


async def test_a_full_last_page_has_no_next_link(
    http: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    rider = await create_account(http, "rider")
    start = datetime.now(UTC) - timedelta(hours=1)
    for n in range(3):
        await insert_trip(db, rider.id, start + timedelta(seconds=n))

    response = await http.get("/api/trip/", params={"limit": 3}, headers=bearer(rider))

    assert len(response.json()) == 3
    assert "link" not in response.headers


async def test_the_status_filter_applies_to_every_page(
    http: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    rider = await create_account(http, "rider")
    driver_id = await insert_user(db, "driver")
    start = datetime.now(UTC) - timedelta(hours=1)
    completed = []
    for n in range(5):
        created = start + timedelta(seconds=n)
        completed.append(await insert_trip(db, rider.id, created, "COMPLETED", driver_id))
        await insert_trip(db, rider.id, created + timedelta(milliseconds=1))  # CANCELLED
    requested = await insert_trip(db, rider.id, start + timedelta(minutes=1), "REQUESTED")

    pages = await every_page(http, rider, "/api/trip/?status=COMPLETED&limit=2")

    assert [ids(page) for page in pages] == [completed[4:2:-1], completed[2:0:-1], completed[:1]]
    assert all(trip["status"] == "COMPLETED" for page in pages for trip in page)
    only_open = await http.get("/api/trip/?status=REQUESTED", headers=bearer(rider))
    assert ids(only_open.json()) == [requested]


async def test_listed_trips_carry_their_version_and_cancel_reason(
    http: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    rider = await create_account(http, "rider")
    trip_id = await insert_trip(db, rider.id, datetime.now(UTC) - timedelta(hours=1))
    await db.execute(
        "UPDATE trips SET cancel_reason = 'no_driver', version = 2 WHERE id = $1",
        uuid.UUID(trip_id),
    )

    [listed] = (await http.get("/api/trip/", headers=bearer(rider))).json()
    detail = (await http.get(f"/api/trip/{trip_id}/", headers=bearer(rider))).json()

    assert listed == detail
    assert (listed["status"], listed["version"], listed["cancel_reason"]) == (
        "CANCELLED",
        2,
        "no_driver",
    )


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ({"limit": "0"}, "limit"),
        ({"limit": "101"}, "limit"),
        ({"limit": "-1"}, "limit"),
        ({"limit": "ten"}, "limit"),
        ({"limit": "2.5"}, "limit"),
        ({"limit": "٣"}, "limit"),  # a digit, but not an ASCII one
        ({"status": "requested"}, "status"),
        ({"status": "LOST"}, "status"),
        ({"cursor": "not-a-cursor"}, "cursor"),
        ({"cursor": "!" * 32}, "cursor"),
        ({"cursor": "AAAA"}, "cursor"),
    ],
)
async def test_a_bad_query_parameter_is_a_400_naming_it(
    http: httpx.AsyncClient, query: dict[str, str], field: str
) -> None:
    rider = await create_account(http, "rider")

    response = await http.get("/api/trip/", params=query, headers=bearer(rider))

    assert response.status_code == 400, response.text
    body = response.json()
    assert set(body) == {"detail", "code", "fields"}
    assert body["code"] == "invalid_data"
    assert set(body["fields"]) == {field}
    assert all(isinstance(message, str) and message for message in body["fields"][field])
    assert field in body["detail"]


async def test_every_bad_parameter_is_named_at_once(http: httpx.AsyncClient) -> None:
    rider = await create_account(http, "rider")

    response = await http.get("/api/trip/?limit=0&status=NOPE&cursor=%25%25", headers=bearer(rider))

    assert response.status_code == 400
    assert set(response.json()["fields"]) == {"limit", "status", "cursor"}


async def test_the_token_is_checked_before_the_query(http: httpx.AsyncClient) -> None:
    response = await http.get("/api/trip/?limit=0")

    assert response.status_code == 401
    assert response.json()["code"] == "not_authenticated"


async def test_a_driver_pages_through_open_requests_and_every_trip_of_their_own(
    http: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    driver = await create_account(http, "driver")
    other_driver_id = await insert_user(db, "driver")
    long_ago = datetime.now(UTC) - timedelta(days=2)
    # Trips of their own that have ended: a driver on a trip sees no open request.
    own = [
        await insert_trip(db, await insert_user(db, "rider"), long_ago, status, driver.id)
        for status in ("CANCELLED", "COMPLETED", "COMPLETED", "CANCELLED")
    ]
    others = [
        await insert_trip(db, await insert_user(db, "rider"), long_ago, status, other_driver_id)
        for status in ("IN_PROGRESS", "COMPLETED", "CANCELLED")
    ]
    others.append(await insert_trip(db, await insert_user(db, "rider"), long_ago))
    # More open requests than fit on a page, all newer than the driver's own trips.
    now = datetime.now(UTC)
    requests = [
        await insert_trip(db, await insert_user(db, "rider"), now, "REQUESTED")
        for _ in range(PAGE_LIMIT + 1)
    ]
    try:
        pages = await every_page(http, driver, "/api/trip/")
    finally:
        # Leave no open requests behind for other tests' drivers.
        await db.execute(
            "UPDATE trips SET status = 'CANCELLED' WHERE id = ANY($1::uuid[])",
            [uuid.UUID(trip_id) for trip_id in requests],
        )

    listed = [trip for page in pages for trip in page]
    assert len(pages) >= 2 and len(pages[0]) == PAGE_LIMIT
    assert set(own) <= set(ids(listed))
    assert set(requests) <= set(ids(listed))
    assert set(others).isdisjoint(ids(listed))
    assert len(ids(listed)) == len(set(ids(listed)))
    for trip in listed:
        assert trip["status"] == "REQUESTED" or trip["driver"]["id"] == driver.id, trip

    own_only = await every_page(http, driver, "/api/trip/?status=COMPLETED&limit=1")
    assert sorted(trip_id for page in own_only for trip_id in ids(page)) == sorted(own[1:3])


async def test_a_driver_reads_an_open_request_or_their_own_trip_and_nothing_else(
    http: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    driver = await create_account(http, "driver")
    other_driver = await create_account(http, "driver")
    rider = await create_account(http, "rider")
    created = datetime.now(UTC) - timedelta(hours=1)
    taken = await insert_trip(db, rider.id, created, "STARTED", other_driver.id)
    earlier = await insert_trip(
        db, await insert_user(db, "rider"), created, "COMPLETED", other_driver.id
    )
    dropped = await insert_trip(
        db, await insert_user(db, "rider"), created, "CANCELLED", other_driver.id
    )
    open_request = await insert_trip(
        db, await insert_user(db, "rider"), datetime.now(UTC), "REQUESTED"
    )

    async def status_of(account: Account, trip_id: str) -> int:
        return (await http.get(f"/api/trip/{trip_id}/", headers=bearer(account))).status_code

    try:
        for trip_id in (taken, earlier, dropped):
            assert await status_of(driver, trip_id) == 404
            assert await status_of(other_driver, trip_id) == 200
        assert await status_of(rider, taken) == 200
        assert await status_of(driver, open_request) == 200
        not_found = await http.get(f"/api/trip/{taken}/", headers=bearer(driver))
        assert not_found.json() == {
            "detail": "no such trip, or not one you may see",
            "code": "not_found",
        }
    finally:
        await db.execute(
            "UPDATE trips SET status = 'CANCELLED' WHERE id = $1", uuid.UUID(open_request)
        )
