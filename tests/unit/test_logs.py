"""shared.logs: no token or password reaches a log line."""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator
from typing import Any

import pytest

from shared.logs import PerConnectionAtDebug, RedactSecrets, redact

TOKEN = "eyJhbGciOiJIUzI1NiJ9.eyJpZCI6MX0.c2lnbmF0dXJl"
UVICORN_WEBSOCKET = '%s - "WebSocket %s" [%s]'


@pytest.fixture
def log() -> Iterator[tuple[logging.Logger, io.StringIO]]:
    """A logger whose handler redacts, as configure_logging's does, writing to a buffer."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(RedactSecrets())
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    logger = logging.getLogger(f"tests.unit.test_logs.{id(stream)}")
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    yield logger, stream
    logger.removeHandler(handler)


def record(msg: str, *args: Any) -> logging.LogRecord:
    return logging.LogRecord("uvicorn.error", logging.INFO, __file__, 1, msg, args, None)


def test_a_token_in_a_websocket_path_is_redacted(
    log: tuple[logging.Logger, io.StringIO],
) -> None:
    logger, stream = log

    logger.info(UVICORN_WEBSOCKET, "127.0.0.1:51234", f"/taxi/?token={TOKEN}", "accepted")

    line = stream.getvalue()
    assert TOKEN not in line
    assert "eyJ" not in line
    assert line == 'INFO 127.0.0.1:51234 - "WebSocket /taxi/?token=[redacted]" [accepted]\n'


def test_the_filter_rewrites_a_record_formatted_with_args() -> None:
    entry = record(UVICORN_WEBSOCKET, "127.0.0.1:5000", "/taxi/?token=abc.def.ghi", "accepted")

    assert RedactSecrets().filter(entry) is True

    assert entry.getMessage() == ('127.0.0.1:5000 - "WebSocket /taxi/?token=[redacted]" [accepted]')
    assert "abc.def.ghi" not in entry.getMessage()


def test_other_messages_are_left_alone() -> None:
    entry = record(UVICORN_WEBSOCKET, "127.0.0.1:5000", "/taxi/", "accepted")

    assert RedactSecrets().filter(entry) is True

    assert entry.msg == UVICORN_WEBSOCKET
    assert entry.args == ("127.0.0.1:5000", "/taxi/", "accepted")
    assert entry.getMessage() == '127.0.0.1:5000 - "WebSocket /taxi/" [accepted]'


def test_other_lines_reach_the_log_unchanged(log: tuple[logging.Logger, io.StringIO]) -> None:
    logger, stream = log

    logger.info("gateway ready on http://%s:%s", "127.0.0.1", 8000)
    logger.warning("user %s has %d trips", "tokenless", 3)

    assert stream.getvalue() == (
        "INFO gateway ready on http://127.0.0.1:8000\nWARNING user tokenless has 3 trips\n"
    )


def test_only_the_secret_is_redacted_and_the_rest_of_the_query_is_kept() -> None:
    path = f"/taxi/?lang=en&token={TOKEN}&v=2"

    assert redact(path) == "/taxi/?lang=en&token=[redacted]&v=2"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("/taxi/?TOKEN=abc", "/taxi/?TOKEN=[redacted]"),
        ("refresh=abc.def.ghi done", "refresh=[redacted] done"),
        ("access=abc.def.ghi", "access=[redacted]"),
        ("password=hunter2&user=ann", "password=[redacted]&user=ann"),
        ("password1=hunter2&password2=hunter2", "password1=[redacted]&password2=[redacted]"),
        ("'/taxi/?token=abc'", "'/taxi/?token=[redacted]'"),
    ],
)
def test_each_kind_of_secret_is_redacted(text: str, expected: str) -> None:
    assert redact(text) == expected


@pytest.mark.parametrize(
    "text", ["token_type=access", "a token was refused", "tokens=3 left", "/taxi/?token="]
)
def test_text_without_a_secret_value_is_unchanged(text: str) -> None:
    assert redact(text) == text


def test_the_refused_handshake_noise_is_dropped() -> None:
    entry = record("ASGI callable returned without completing handshake.")

    assert RedactSecrets().filter(entry) is False


def test_an_error_about_a_handshake_that_is_not_the_noise_is_kept() -> None:
    entry = record("Exception in ASGI application")

    assert RedactSecrets().filter(entry) is True


@pytest.mark.parametrize(
    "msg, args",
    [
        ("connection open", ()),
        ("connection closed", ()),
        ('%s - "WebSocket %s" [accepted]', ("127.0.0.1:5", "/taxi/")),
        ('%s - "WebSocket %s" %d', ("127.0.0.1:5", "/taxi/", 401)),
    ],
)
def test_a_line_per_websocket_is_left_out_above_debug(msg: str, args: tuple[Any, ...]) -> None:
    assert PerConnectionAtDebug().filter(record(msg, *args)) is False


def test_a_warning_with_the_same_text_is_kept() -> None:
    entry = record("connection closed")
    entry.levelno = logging.WARNING

    assert PerConnectionAtDebug().filter(entry) is True
    assert PerConnectionAtDebug().filter(record("Application startup complete.")) is True
