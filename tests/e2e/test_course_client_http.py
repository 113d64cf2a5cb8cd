"""The course's own React client (testdriven.io taxi-react-app, `client/`, v4.0.0) calling
the HTTP API from its own origin (PROTOCOL D4): the pre-flights its requests cause are
answered, every answer it reads names its origin, photos load, the security headers
stay, and the errors of its sign-up and log-in forms come as those forms read them.

The requests here are the ones that client sends: axios's default
`Accept: application/json, text/plain, */*` on every call, the sign-up as multipart
form data (its `photo` an empty string when none was chosen), the log-in as JSON, and
`Authorization: Bearer` on the trip reads. Its forms read an error body by calling
`.join(" ")` on every top-level key and showing each under the form field of that name
(the log-in form shows `__all__` as an alert).
"""

from __future__ import annotations

import io
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image

from shared.settings import Settings
from tools.processes import ServiceProcess, start_gateway

COURSE_ORIGIN = "http://localhost:3001"
AXIOS_ACCEPT = "application/json, text/plain, */*"
PASSWORD = "a-Long-uncommon-pw"
# What its requests carry besides their bodies (a browser adds Origin itself).
FROM_COURSE = {"Origin": COURSE_ORIGIN, "Accept": AXIOS_ACCEPT}


@pytest.fixture(scope="module")
def course_gateway(settings: Settings, log_dir: Path) -> Iterator[tuple[ServiceProcess, str]]:
    """A gateway that lets the course's page, on another origin, call it."""
    process, base_url = start_gateway(replace(settings, cors_origins=COURSE_ORIGIN), log_dir)
    yield process, base_url
    process.stop()


@pytest.fixture
async def course_http(
    course_gateway: tuple[ServiceProcess, str],
) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=course_gateway[1], timeout=10) as client:
        yield client


def png_bytes() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (30, 90, 200)).save(buffer, format="PNG")
    return buffer.getvalue()


def course_sign_up_form(username: str, **changes: str) -> dict[str, str]:
    """SignUp.js's FormData: the one password field sent as both passwords."""
    password = changes.pop("password", PASSWORD)
    return {
        "username": username,
        "first_name": "Ann",
        "last_name": "Rider",
        "password1": password,
        "password2": password,
        "group": changes.pop("group", "rider"),
        **changes,
    }


def new_username() -> str:
    return f"course-{uuid.uuid4().hex[:10]}@example.org"


async def course_sign_up(
    http: httpx.AsyncClient, username: str, photo: bytes | None = None, **changes: str
) -> httpx.Response:
    form = course_sign_up_form(username, **changes)
    if photo is None:
        # Formik's initial value, [], appended to FormData: the string "".
        # A part without a file name: a plain field, as a browser sends it.
        return await http.post(
            "/api/sign_up/", data=form, files={"photo": (None, b"")}, headers=FROM_COURSE
        )
    return await http.post(
        "/api/sign_up/",
        data=form,
        files={"photo": ("me.png", photo, "image/png")},
        headers=FROM_COURSE,
    )


async def course_log_in(http: httpx.AsyncClient, username: str, password: str) -> httpx.Response:
    return await http.post(
        "/api/log_in/", json={"username": username, "password": password}, headers=FROM_COURSE
    )


def assert_allows_course_origin(response: httpx.Response) -> None:
    assert response.headers.get("access-control-allow-origin") == COURSE_ORIGIN, (
        response.status_code,
        dict(response.headers),
    )


def assert_security_headers(response: httpx.Response) -> None:
    assert "frame-ancestors 'none'" in response.headers["content-security-policy"]
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["x-frame-options"] == "DENY"
    assert response.headers["referrer-policy"] == "no-referrer"


def assert_course_form_errors(response: httpx.Response, status: int) -> dict[str, list[str]]:
    """A body the course's forms can show: every key holds a list of strings (they
    call `.join(" ")` on each)."""
    assert response.status_code == status, response.text
    body: Any = response.json()
    assert isinstance(body, dict) and body, body
    for messages in body.values():
        assert isinstance(messages, list) and messages, body
        assert all(isinstance(message, str) and message for message in messages), body
    return body


# --- pre-flights -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "method", "headers"),
    [
        # App.js logIn: axios.post(url, {username, password}) is JSON.
        ("/api/log_in/", "POST", "content-type"),
        # TripService getTrips / getTrip: axios.get with an Authorization header.
        ("/api/trip/", "GET", "authorization"),
        (f"/api/trip/{uuid.uuid4()}/", "GET", "authorization"),
        # Not pre-flighted by the course's client (a form post is a simple request),
        # but by any page that posts JSON; and the refresh its tokens would need.
        ("/api/sign_up/", "POST", "content-type"),
        ("/api/token/refresh/", "POST", "content-type"),
    ],
)
async def test_the_pre_flights_of_the_course_client_are_answered(
    course_http: httpx.AsyncClient, path: str, method: str, headers: str
) -> None:
    response = await course_http.options(
        path,
        headers={
            "Origin": COURSE_ORIGIN,
            "Access-Control-Request-Method": method,
            "Access-Control-Request-Headers": headers,
        },
    )

    assert response.status_code == 200, response.text
    assert_allows_course_origin(response)
    assert method in response.headers["access-control-allow-methods"]
    assert headers in response.headers["access-control-allow-headers"].lower()
    assert_security_headers(response)


async def test_a_pre_flight_from_another_origin_is_refused_in_our_error_shape(
    course_http: httpx.AsyncClient,
) -> None:
    response = await course_http.options(
        "/api/log_in/",
        headers={"Origin": "http://evil.example", "Access-Control-Request-Method": "POST"},
    )

    assert response.status_code == 403
    assert response.json()["code"] == "forbidden"
    assert "TAXI_CORS_ORIGINS" in response.json()["detail"]
    assert "access-control-allow-origin" not in response.headers


async def test_without_cors_origins_nothing_is_allowed_across_origins(
    http: httpx.AsyncClient,
) -> None:
    """The run's shared gateway has no TAXI_CORS_ORIGINS: same origin only."""
    pre_flight = await http.options(
        "/api/log_in/",
        headers={"Origin": COURSE_ORIGIN, "Access-Control-Request-Method": "POST"},
    )
    log_in = await http.post(
        "/api/log_in/", json={"username": "x", "password": "y"}, headers=FROM_COURSE
    )

    assert pre_flight.status_code == 405
    assert pre_flight.json()["code"] == "method_not_allowed"
    assert "access-control-allow-origin" not in pre_flight.headers
    assert "access-control-allow-origin" not in log_in.headers


# --- the calls themselves --------------------------------------------------------------


async def test_sign_up_log_in_trips_and_photo_answer_the_course_origin(
    course_http: httpx.AsyncClient,
) -> None:
    username = new_username()
    signed_up = await course_sign_up(course_http, username, photo=png_bytes())
    assert signed_up.status_code == 201, signed_up.text
    assert_allows_course_origin(signed_up)
    assert_security_headers(signed_up)

    logged_in = await course_log_in(course_http, username, PASSWORD)
    assert logged_in.status_code == 200, logged_in.text
    assert_allows_course_origin(logged_in)
    assert set(logged_in.json()) >= {"access", "refresh"}

    bearer = {**FROM_COURSE, "Authorization": f"Bearer {logged_in.json()['access']}"}
    trips = await course_http.get("/api/trip/", headers=bearer)
    assert trips.status_code == 200, trips.text
    assert trips.json() == []
    assert_allows_course_origin(trips)
    missing = await course_http.get(f"/api/trip/{uuid.uuid4()}/", headers=bearer)
    assert missing.status_code == 404
    assert_allows_course_origin(missing)

    # TripMedia.js: <img src={new URL(user.photo, REACT_APP_BASE_URL)}>, no crossorigin
    # attribute: a plain cross-origin image load, which no header of ours may block.
    photo = await course_http.get(
        signed_up.json()["photo"], headers={"Referer": f"{COURSE_ORIGIN}/"}
    )
    assert photo.status_code == 200
    assert photo.headers["content-type"] == "image/png"
    assert "cross-origin-resource-policy" not in photo.headers
    # And read from script, should a page want to.
    photo_from_script = await course_http.get(signed_up.json()["photo"], headers=FROM_COURSE)
    assert_allows_course_origin(photo_from_script)


async def test_a_sign_up_without_a_photo_is_accepted(course_http: httpx.AsyncClient) -> None:
    signed_up = await course_sign_up(course_http, new_username(), group="driver")

    assert signed_up.status_code == 201, signed_up.text
    assert signed_up.json()["photo"] is None
    assert signed_up.json()["group"] == "driver"


# --- what its forms show -----------------------------------------------------------------


async def test_a_taken_user_name_is_shown_under_the_user_name(
    course_http: httpx.AsyncClient,
) -> None:
    username = new_username()
    assert (await course_sign_up(course_http, username)).status_code == 201

    again = await course_sign_up(course_http, username.upper())

    body = assert_course_form_errors(again, 400)
    assert set(body) == {"username"}
    assert "already exists" in " ".join(body["username"])
    assert_allows_course_origin(again)


async def test_a_weak_password_is_shown_under_the_password(
    course_http: httpx.AsyncClient,
) -> None:
    response = await course_sign_up(course_http, new_username(), password="12345678")

    body = assert_course_form_errors(response, 400)
    # SignUp.js's one password field shows the errors of password1.
    assert set(body) == {"password1"}
    assert "digits" in " ".join(body["password1"])


async def test_a_file_that_is_no_image_is_shown_under_the_photo(
    course_http: httpx.AsyncClient,
) -> None:
    response = await course_sign_up(course_http, new_username(), photo=b"<html>no image</html>")

    body = assert_course_form_errors(response, 400)
    assert set(body) == {"photo"}


async def test_a_photo_over_the_limit_is_shown_under_the_photo(
    course_gateway: tuple[ServiceProcess, str], course_http: httpx.AsyncClient
) -> None:
    too_large = course_gateway[0].settings.max_photo_bytes + 128 * 1024

    response = await course_sign_up(course_http, new_username(), photo=b"\0" * too_large)

    body = assert_course_form_errors(response, 413)
    assert set(body) == {"photo"}
    assert_allows_course_origin(response)


async def test_a_failed_log_in_is_shown_as_the_log_in_forms_alert(
    course_http: httpx.AsyncClient,
) -> None:
    """LogIn.js shows `__all__` in an alert (the course's own server answered
    `{"detail": "..."}` here, on which that form throws and shows nothing)."""
    response = await course_log_in(course_http, new_username(), "wrong-password")

    body = assert_course_form_errors(response, 401)
    assert set(body) == {"__all__"}
    assert "username and password" in body["__all__"][0]
    assert_allows_course_origin(response)


async def test_everyone_else_gets_our_one_error_shape(course_http: httpx.AsyncClient) -> None:
    """Our browser client (Accept: application/json), curl (*/*), or no Accept at all."""
    username = new_username()
    assert (await course_sign_up(course_http, username)).status_code == 201
    for accept in ("application/json", "*/*", None):
        headers = {"Origin": COURSE_ORIGIN} | ({"Accept": accept} if accept else {})

        taken = await course_http.post(
            "/api/sign_up/", data=course_sign_up_form(username), headers=headers
        )
        refused = await course_http.post(
            "/api/log_in/", json={"username": username, "password": "nope-nope"}, headers=headers
        )

        assert taken.status_code == 400
        assert taken.json()["code"] == "invalid_data"
        assert set(taken.json()["fields"]) == {"username"}
        assert refused.status_code == 401
        assert refused.json()["code"] == "invalid_credentials"


async def test_the_course_dialect_covers_only_its_forms(course_http: httpx.AsyncClient) -> None:
    """Its trip reads ignore error bodies: they keep our shape, even from axios."""
    response = await course_http.get(
        "/api/trip/", headers={**FROM_COURSE, "Authorization": "Bearer nope"}
    )

    assert response.status_code == 401
    assert response.json()["code"] == "token_not_valid"
