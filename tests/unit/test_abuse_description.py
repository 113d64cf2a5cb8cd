"""The service description says what PROTOCOL D1's "HTTP abuse" and "user names and
photos" rules answer: 429 with Retry-After on log-in and sign-up, 400 naming the
photo's pixel limit, and the codes of the one error shape."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.web import description
from gateway.web.http_timeouts import TIMED_OUT
from gateway.web.throttle import rate_limited


def openapi() -> dict[str, Any]:
    return description.openapi()


def resolve(node: dict[str, Any]) -> dict[str, Any]:
    if "$ref" in node:
        name = node["$ref"].rsplit("/", 1)[-1]
        return dict(openapi()["components"]["responses"][name])
    return node


@pytest.mark.parametrize("path", ["/api/sign_up/", "/api/log_in/"])
def test_log_in_and_sign_up_describe_429_with_retry_after(path: str) -> None:
    answer = resolve(openapi()["paths"][path]["post"]["responses"]["429"])

    assert "rate_limited" in answer["description"]
    assert answer["headers"]["Retry-After"]["schema"]["type"] == "integer"
    assert answer["content"]["application/json"]["schema"]["$ref"].endswith("/Error")


def test_the_sign_up_400_names_the_photo_pixel_limit_and_look_alikes() -> None:
    said = openapi()["paths"]["/api/sign_up/"]["post"]["responses"]["400"]["description"]

    assert "TAXI_PHOTO_MAX_PIXELS" in said
    assert "TS #39" in said


def test_the_codes_of_throttling_and_slow_requests_are_named() -> None:
    said = openapi()["components"]["schemas"]["Error"]["properties"]["code"]["description"]
    answer = rate_limited("too many", 7)

    assert f"`{answer.code}`" in said
    assert answer.status == 429 and answer.headers == {"Retry-After": "7"}
    assert "`request_timeout`" in said
    assert b'"code": "request_timeout"' in TIMED_OUT
