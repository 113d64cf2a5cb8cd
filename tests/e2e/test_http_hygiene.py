"""What every HTTP answer of the gateway shares (PROTOCOL C4, issue "describe the
service"): one error shape, JSON 404s and 405s, bodies capped while they stream in,
and the security headers a browser needs."""

from __future__ import annotations

import asyncio
import io
import time
import uuid
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from PIL import Image

from tests.clients import create_account

ERROR_KEYS = {"detail", "code"}


def assert_error_shape(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json"), response.text
    body = response.json()
    assert ERROR_KEYS <= set(body) <= ERROR_KEYS | {"fields"}, body
    assert body["code"] == code, body
    assert isinstance(body["detail"], str) and body["detail"], body
    return dict(body)


@pytest.mark.parametrize("path", ["/api/nothing-here/", "/nope", "/api/trip/x/y/"])
async def test_an_unknown_path_is_a_json_404(http: httpx.AsyncClient, path: str) -> None:
    body = assert_error_shape(await http.get(path), 404, "not_found")

    assert path in body["detail"]


@pytest.mark.parametrize(
    ("method", "path", "allowed"),
    [
        ("GET", "/api/sign_up/", "POST"),
        ("DELETE", "/api/log_in/", "POST"),
        ("POST", "/api/trip/", "GET"),
    ],
)
async def test_a_wrong_method_is_a_json_405_naming_the_allowed_ones(
    http: httpx.AsyncClient, method: str, path: str, allowed: str
) -> None:
    response = await http.request(method, path)

    body = assert_error_shape(response, 405, "method_not_allowed")
    assert allowed in response.headers["allow"]
    assert allowed in body["detail"]


async def test_refusals_of_every_kind_share_one_shape(http: httpx.AsyncClient) -> None:
    assert_error_shape(await http.post("/api/sign_up/", json={}), 400, "invalid_data")
    assert_error_shape(
        await http.post("/api/log_in/", content=b"{", headers={"content-type": "application/json"}),
        400,
        "invalid_json",
    )
    assert_error_shape(
        await http.post("/api/log_in/", json={"username": "nobody@example.com", "password": "x"}),
        401,
        "invalid_credentials",
    )
    assert_error_shape(
        await http.post("/api/token/refresh/", json={"refresh": "not-a-token"}),
        401,
        "token_not_valid",
    )
    assert_error_shape(await http.get("/api/trip/"), 401, "not_authenticated")
    assert_error_shape(
        await http.post("/api/log_in/", content=b"x", headers={"content-type": "text/plain"}),
        415,
        "unsupported_media_type",
    )


async def test_token_messages_are_plain_words_without_library_text(
    http: httpx.AsyncClient,
) -> None:
    account = await create_account(http, "rider")
    malformed = await http.post("/api/token/refresh/", json={"refresh": "abc"})
    wrong_type = await http.post("/api/token/refresh/", json={"refresh": account.access})

    assert "segments" not in malformed.json()["detail"].lower()
    assert wrong_type.json()["detail"] == "this is an access token; send a refresh token"


async def send_chunked(
    base_url: str, path: str, total: int, content_type: str, prefix: bytes = b""
) -> tuple[int, int]:
    """POST `total` bytes in chunks without a Content-Length, stopping as soon as an
    answer arrives; return the answer's status and how many bytes were sent."""
    parts = urlsplit(base_url)
    reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
    writer.write(
        (
            f"POST {path} HTTP/1.1\r\nHost: {parts.netloc}\r\n"
            f"Content-Type: {content_type}\r\nTransfer-Encoding: chunked\r\n\r\n"
        ).encode()
    )
    answer = asyncio.create_task(reader.readline())
    writer.write(b"%x\r\n%s\r\n" % (len(prefix), prefix) if prefix else b"")
    chunk = b"x" * 65536
    sent = len(prefix)
    try:
        while sent < total and not answer.done():
            writer.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            await writer.drain()
            sent += len(chunk)
            await asyncio.sleep(0)  # let the answer be read as soon as it comes
        status_line = await asyncio.wait_for(answer, 30)
    except (ConnectionError, OSError):
        status_line = await asyncio.wait_for(answer, 30)
    finally:
        writer.close()
    return int(status_line.split()[1]), sent


# A photo part that never ends: the parser takes every chunk as more of the file.
ENDLESS_PHOTO = (
    b'--xyz\r\nContent-Disposition: form-data; name="photo"; filename="me.png"\r\n'
    b"Content-Type: image/png\r\n\r\n"
)


@pytest.mark.parametrize(
    ("path", "content_type", "prefix", "cap"),
    [
        (
            "/api/sign_up/",
            "multipart/form-data; boundary=xyz",
            ENDLESS_PHOTO,
            5 * 1024 * 1024 + 64 * 1024,
        ),
        ("/api/log_in/", "multipart/form-data; boundary=xyz", ENDLESS_PHOTO, 64 * 1024),
        ("/api/log_in/", "application/json", b'{"username": "', 64 * 1024),
        ("/api/sign_up/", "application/json", b'{"username": "', 64 * 1024),
        ("/api/log_in/", "application/x-www-form-urlencoded", b"username=", 64 * 1024),
    ],
)
async def test_a_chunked_body_over_the_cap_is_refused_while_it_streams(
    base_url: str, path: str, content_type: str, prefix: bytes, cap: int
) -> None:
    status, sent = await send_chunked(base_url, path, 60 * 1024 * 1024, content_type, prefix)

    assert status == 413
    # Refused soon after the cap, not after reading the whole 60 MB.
    assert sent < cap + 8 * 1024 * 1024


@pytest.mark.parametrize("path", ["/", "/api/trip/", "/api/nothing/", "/healthz"])
async def test_every_answer_carries_the_security_headers(
    http: httpx.AsyncClient, path: str
) -> None:
    response = await http.get(path)

    csp = response.headers["content-security-policy"]
    assert "default-src 'self'" in csp
    assert "frame-ancestors 'none'" in csp
    assert "https://tile.openstreetmap.org" in csp  # the configured tile server
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["referrer-policy"] == "no-referrer"
    assert response.headers["x-frame-options"] == "DENY"


async def test_the_favicon_is_not_a_404(http: httpx.AsyncClient) -> None:
    started = time.monotonic()
    response = await http.get("/favicon.ico")

    assert response.status_code == 200, response.text
    assert time.monotonic() - started < 10


def png_bytes() -> bytes:
    image = Image.new("RGB", (4, 4), (200, 30, 30))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


SIGN_UP = {
    "first_name": "Ann",
    "last_name": "Rider",
    "password1": "a-Long-uncommon-pw",
    "password2": "a-Long-uncommon-pw",
    "group": "rider",
}


def new_username() -> str:
    return f"photo-{uuid.uuid4().hex[:10]}@example.org"


@pytest.mark.parametrize(
    "content",
    [
        b"<html><script>alert(1)</script></html>",
        b"\x89PNG\r\n\x1a\n but not really",
        png_bytes()[:40],  # a real PNG, cut short
    ],
)
async def test_a_photo_is_checked_by_its_content_not_its_declared_type(
    http: httpx.AsyncClient, content: bytes
) -> None:
    response = await http.post(
        "/api/sign_up/",
        data={**SIGN_UP, "username": new_username()},
        files={"photo": ("me.png", content, "image/png")},
    )

    fields = assert_error_shape(response, 400, "invalid_data")["fields"]
    assert set(fields) == {"photo"}


async def test_a_photo_is_stored_and_served_as_what_it_is_with_nosniff(
    http: httpx.AsyncClient,
) -> None:
    content = png_bytes()
    signed_up = await http.post(
        "/api/sign_up/",
        data={**SIGN_UP, "username": new_username()},
        files={"photo": ("me.jpg", content, "image/jpeg")},  # a PNG, declared a JPEG
    )
    assert signed_up.status_code == 201, signed_up.text
    photo = signed_up.json()["photo"]

    served = await http.get(photo)

    assert photo.endswith(".png")
    assert Image.open(io.BytesIO(served.content)).format == "PNG"
    assert served.headers["content-type"] == "image/png"
    assert served.headers["x-content-type-options"] == "nosniff"


async def test_one_user_name_in_two_unicode_forms_and_two_cases_is_one_user(
    http: httpx.AsyncClient,
) -> None:
    local = uuid.uuid4().hex[:8]
    first = await http.post(
        "/api/sign_up/", json={**SIGN_UP, "username": f"caf\u00e9-{local}@x.com"}
    )
    again = await http.post(
        "/api/sign_up/", json={**SIGN_UP, "username": f"CAFE\u0301-{local}@x.com"}
    )
    logged_in = await http.post(
        "/api/log_in/",
        json={"username": f"cafe\u0301-{local}@X.COM", "password": SIGN_UP["password1"]},
    )

    assert first.status_code == 201, first.text
    assert (
        "already exists" in assert_error_shape(again, 400, "invalid_data")["fields"]["username"][0]
    )
    assert logged_in.status_code == 200, logged_in.text
