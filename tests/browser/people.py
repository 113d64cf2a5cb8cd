"""People for the browser tests and the README's screenshots: accounts with a name and
a photo, signed up over HTTP as the sign-up form does, and the photo itself (a plain
drawn portrait: a head and shoulders on a coloured ground, made here, no file)."""

from __future__ import annotations

import struct
import zlib

import httpx

from tests.clients import PASSWORD, Account, new_username

Colour = tuple[int, int, int]


def portrait_png(
    shirt: Colour, ground: Colour, skin: Colour = (233, 190, 150), size: int = 96
) -> bytes:
    """A small PNG portrait: a round head over round shoulders."""
    centre = size / 2
    rows = []
    for y in range(size):
        row = bytearray(b"\x00")  # PNG filter type "none"
        for x in range(size):
            head = (x - centre) ** 2 + (y - size * 0.4) ** 2 <= (size * 0.19) ** 2
            shoulders = ((x - centre) / (size * 0.36)) ** 2 + ((y - size) / (size * 0.4)) ** 2 <= 1
            row += bytes(skin if head else shirt if shoulders else ground)
        rows.append(bytes(row))

    def chunk(kind: bytes, data: bytes) -> bytes:
        checksum = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", checksum)

    header = struct.pack(">IIBBBBB", size, size, 8, 2, 0, 0, 0)  # 8-bit RGB
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"".join(rows), 9))
        + chunk(b"IEND", b"")
    )


async def person(
    http: httpx.AsyncClient,
    group: str,
    first_name: str,
    last_name: str,
    photo: bytes | None = None,
    username: str | None = None,
) -> Account:
    """Sign up (with a photo, if given) and log in."""
    username = username or new_username(group)
    form = {
        "username": username,
        "first_name": first_name,
        "last_name": last_name,
        "password1": PASSWORD,
        "password2": PASSWORD,
        "group": group,
    }
    files = {"photo": (f"{first_name.lower()}.png", photo, "image/png")} if photo else None
    response = await http.post("/api/sign_up/", data=form, files=files)
    assert response.status_code == 201, response.text
    user = response.json()
    response = await http.post("/api/log_in/", json={"username": username, "password": PASSWORD})
    assert response.status_code == 200, response.text
    tokens = response.json()
    return Account(user=user, access=tokens["access"], refresh=tokens["refresh"])
