"""User names and photos (PROTOCOL D1): look-alikes of a taken name are taken, markup
is no user name, every bad field is named at once, and photos are stored re-encoded,
without metadata, at most 1024 on a side, with too many pixels refused."""

from __future__ import annotations

import io
import uuid

import asyncpg
import httpx
import pytest
from PIL import Image

from shared.migrate import fill_username_skeletons
from shared.settings import Settings
from shared.user_names import skeleton
from tests.clients import PASSWORD

TAKEN = "A user with that username already exists."
GPS_IFD = 0x8825


def fields(username: str, **changes: str) -> dict[str, str]:
    return {
        "username": username,
        "password1": PASSWORD,
        "password2": PASSWORD,
        "group": "rider",
        **changes,
    }


def base_name() -> str:
    # Digits only after the letters: nothing in the random part is a look-alike.
    return f"kopal{uuid.uuid4().int % 10**12}@example.org"


@pytest.mark.parametrize(
    ("original", "look_alike"),
    [
        ("a", "\u0430"),  # Cyrillic a
        ("o", "\u03bf"),  # Greek omicron
        ("k", "\u212a"),  # Kelvin sign
        ("l", "1"),
    ],
)
async def test_a_look_alike_of_a_taken_name_is_refused_as_taken(
    http: httpx.AsyncClient, original: str, look_alike: str
) -> None:
    name = base_name()
    assert (await http.post("/api/sign_up/", json=fields(name))).status_code == 201

    response = await http.post("/api/sign_up/", json=fields(name.replace(original, look_alike, 1)))

    assert response.status_code == 400, response.text
    assert response.json()["fields"] == {"username": [TAKEN]}


async def test_markup_is_no_user_name(http: httpx.AsyncClient) -> None:
    response = await http.post(
        "/api/sign_up/", json=fields("<img/src=x/onerror=alert(1)>@example.com")
    )

    assert response.status_code == 400, response.text
    assert set(response.json()["fields"]) == {"username"}
    assert "e-mail address" in response.json()["fields"]["username"][0]


async def test_a_taken_name_is_named_with_every_other_bad_field(http: httpx.AsyncClient) -> None:
    name = base_name()
    assert (await http.post("/api/sign_up/", json=fields(name))).status_code == 201

    response = await http.post(
        "/api/sign_up/",
        data=fields(name, password2="something-else", group="admin"),
        files={"photo": ("me.png", b"<html>not a photo</html>", "image/png")},
    )

    assert response.status_code == 400, response.text
    errors = response.json()["fields"]
    assert set(errors) == {"username", "password2", "group", "photo"}
    assert errors["username"] == [TAKEN]


async def test_users_who_signed_up_before_skeletons_get_theirs_when_migrating(
    http: httpx.AsyncClient, db: asyncpg.Connection, settings: Settings
) -> None:
    name = base_name()
    # As a user who signed up before migration 0010 is: no skeleton.
    await db.execute(
        "INSERT INTO users (username, password_hash, user_group) VALUES ($1, 'x', 'rider')",
        name,
    )

    fill_username_skeletons(settings.database_url)

    stored = await db.fetchval("SELECT username_skeleton FROM users WHERE username = $1", name)
    assert stored == skeleton(name)
    look_alike = await http.post("/api/sign_up/", json=fields(name.replace("a", "\u0430")))
    assert look_alike.json()["fields"] == {"username": [TAKEN]}


def jpeg_with_gps(size: tuple[int, int]) -> bytes:
    exif = Image.Exif()
    exif.get_ifd(GPS_IFD).update({1: "N", 2: (52.0, 22.0, 12.0), 3: "E", 4: (4.0, 53.0, 2.0)})
    buffer = io.BytesIO()
    Image.new("RGB", size, (20, 90, 160)).save(buffer, format="JPEG", exif=exif.tobytes())
    return buffer.getvalue()


async def test_a_photo_is_served_without_its_gps_and_at_most_1024_on_a_side(
    http: httpx.AsyncClient,
) -> None:
    content = jpeg_with_gps((2000, 1000))
    assert Image.open(io.BytesIO(content)).getexif().get_ifd(GPS_IFD)

    signed_up = await http.post(
        "/api/sign_up/",
        data=fields(base_name()),
        files={"photo": ("me.jpg", content, "image/jpeg")},
    )
    assert signed_up.status_code == 201, signed_up.text
    served = await http.get(signed_up.json()["photo"])

    assert served.status_code == 200
    assert served.headers["content-type"] == "image/jpeg"
    image = Image.open(io.BytesIO(served.content))
    assert image.size == (1024, 512)
    assert not image.getexif()
    assert b"Exif" not in served.content


async def test_a_small_file_that_decodes_to_40_megapixels_is_refused(
    http: httpx.AsyncClient,
) -> None:
    buffer = io.BytesIO()
    Image.new("1", (8000, 5000)).save(buffer, format="PNG", optimize=True)
    assert len(buffer.getvalue()) < 100_000

    response = await http.post(
        "/api/sign_up/",
        data=fields(base_name()),
        files={"photo": ("bomb.png", buffer.getvalue(), "image/png")},
    )

    assert response.status_code == 400, response.text
    assert response.json()["code"] == "invalid_data"
    assert "24,000,000 pixels" in response.json()["fields"]["photo"][0]
