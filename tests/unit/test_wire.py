"""decode_frame and error_frame: the WebSocket envelope and the errors about it."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from shared.wire import ClientFrame, ErrorCode, FrameError, decode_frame, error_frame, with_seq


@pytest.mark.parametrize(
    "text", ["", "this is not JSON", "{", '{"type": "echo.message",}', "{'type': 'x'}", b"\xff"]
)
def test_text_that_is_not_json_is_invalid_json(text: str | bytes) -> None:
    with pytest.raises(FrameError) as refused:
        decode_frame(text)

    assert refused.value.code == ErrorCode.INVALID_JSON == "invalid_json"
    assert "JSON" in refused.value.message
    assert refused.value.request is None


@pytest.mark.parametrize(
    ("text", "kind"),
    [
        ('[{"type": "echo.message"}]', "an array"),
        ('"echo.message"', "a string"),
        ("42", "a number"),
        ("4.2", "a number"),
        ("null", "null"),
        ("true", "a boolean"),
    ],
)
def test_json_that_is_not_an_object_is_an_invalid_frame(text: str, kind: str) -> None:
    with pytest.raises(FrameError) as refused:
        decode_frame(text)

    assert refused.value.code == ErrorCode.INVALID_FRAME == "invalid_frame"
    assert refused.value.message.endswith(f"not {kind}")


@pytest.mark.parametrize(
    "text",
    [
        "{}",
        '{"data": "ping"}',
        '{"type": "", "data": "ping"}',
        '{"type": null, "data": "ping"}',
        '{"type": 1, "data": "ping"}',
        '{"type": true, "data": "ping"}',
        '{"type": ["echo.message"], "data": "ping"}',
        '{"type": {"name": "echo.message"}, "data": "ping"}',
    ],
)
def test_a_frame_without_a_type_string_is_an_invalid_frame(text: str) -> None:
    with pytest.raises(FrameError) as refused:
        decode_frame(text)

    assert refused.value.code == ErrorCode.INVALID_FRAME
    assert '"type"' in refused.value.message


def test_a_frame_error_is_an_exception_with_its_message() -> None:
    with pytest.raises(FrameError) as refused:
        decode_frame("[]")

    assert str(refused.value) == refused.value.message


def test_a_valid_frame_keeps_type_data_and_raw() -> None:
    text = '{"type": "create.trip", "data": {"pick_up_address": "A"}, "request_id": "r-1"}'

    frame = decode_frame(text)

    assert frame == ClientFrame(
        type="create.trip",
        data={"pick_up_address": "A"},
        raw={"type": "create.trip", "data": {"pick_up_address": "A"}, "request_id": "r-1"},
        request_id="r-1",
    )


@pytest.mark.parametrize(
    "request_id", ["", "x" * 65, "has space", "semi;colon", "é", 7, None, ["r"], {"r": 1}]
)
def test_a_request_id_that_is_not_1_to_64_safe_characters_is_refused(request_id: Any) -> None:
    text = orjson.dumps({"type": "create.trip", "data": {}, "request_id": request_id})
    if request_id is None:
        assert decode_frame(text).request_id is None
        return
    with pytest.raises(FrameError) as refused:
        decode_frame(text)
    assert refused.value.code == "invalid_frame"
    assert "request_id" in refused.value.message


def test_seq_is_added_at_the_top_level_of_a_frame() -> None:
    body = error_frame(ErrorCode.FORBIDDEN, "no", "create.trip", event_id="e")

    assert orjson.loads(with_seq(body, 12)) == {**orjson.loads(body), "seq": 12}


def test_a_valid_frame_may_come_as_bytes() -> None:
    frame = decode_frame(b'{"type": "echo.message", "data": "ping"}')

    assert (frame.type, frame.data) == ("echo.message", "ping")


def test_the_echo_of_a_frame_is_the_identical_object() -> None:
    original = {"type": "echo.message", "data": {"nested": [1, 2.5, None, "é"]}, "extra": True}

    frame = decode_frame(orjson.dumps(original))

    assert frame.raw == original


def test_a_frame_without_data_has_none_as_data() -> None:
    frame = decode_frame('{"type": "echo.message"}')

    assert frame.type == "echo.message"
    assert frame.data is None


def test_error_frame_shape() -> None:
    frame = orjson.loads(error_frame(ErrorCode.UNKNOWN_TYPE, "no such type", "no.such.thing"))

    assert frame == {
        "type": "error",
        "data": {
            "code": "unknown_type",
            "message": "no such type",
            "request": "no.such.thing",
            "request_id": None,
            "trip_id": None,
        },
    }


def test_error_frame_without_a_request_has_a_null_request() -> None:
    frame = orjson.loads(error_frame(ErrorCode.INVALID_JSON, "frame is not valid JSON"))

    assert frame == {
        "type": "error",
        "data": {
            "code": "invalid_json",
            "message": "frame is not valid JSON",
            "request": None,
            "request_id": None,
            "trip_id": None,
        },
    }


def test_an_error_frame_from_a_frame_error() -> None:
    with pytest.raises(FrameError) as refused:
        decode_frame('{"type": ""}')
    error = refused.value

    frame = orjson.loads(error_frame(error.code, error.message, error.request))

    assert frame["type"] == "error"
    assert frame["data"]["code"] == "invalid_frame"
    assert frame["data"]["message"] == error.message
