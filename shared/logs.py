"""Logging for every process: one key=value line per event, level from TAXI_LOG_LEVEL.

No secret reaches a log line: tokens in URLs (the WebSocket passes its token in the
query string, and uvicorn logs the path) are redacted before anything is written.
"""

from __future__ import annotations

import logging
import re
import sys

_SECRET_IN_URL = re.compile(r"((?:token|access|refresh|password\d?)=)[^&\s\"']+", re.IGNORECASE)

# uvicorn's websockets-sansio protocol reports a refused handshake (our HTTP 401
# denial response) as this error although the refusal was answered correctly.
_REFUSED_HANDSHAKE_NOISE = "ASGI callable returned without completing handshake."


# aio-pika warns for each message still buffered when a no-ack consumer closes: for a
# driver's offers queue, offers nobody will read any more. That is the intent.
_DROPPED_OFFER_NOISE = "Message %r lost for consumer with no_ack %r"


# uvicorn logs every WebSocket's opening, handshake and closing at INFO: thousands
# of lines under load, which bury what an operator must see. They show at DEBUG.
_PER_CONNECTION = frozenset(
    {
        "connection open",
        "connection closed",
        '%s - "WebSocket %s" [accepted]',
        '%s - "WebSocket %s" %d',
        '%s - "WebSocket %s" 403',
    }
)


class PerConnectionAtDebug(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return record.msg not in _PER_CONNECTION or record.levelno != logging.INFO


class RedactSecrets(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if message == _REFUSED_HANDSHAKE_NOISE or record.msg == _DROPPED_OFFER_NOISE:
            return False
        redacted = redact(message)
        if redacted != message:
            record.msg, record.args = redacted, None
        return True


def redact(text: str) -> str:
    return _SECRET_IN_URL.sub(r"\1[redacted]", text)


def configure_logging(level: str, process: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(RedactSecrets())
    handler.setFormatter(
        logging.Formatter(
            f"%(asctime)s level=%(levelname)s process={process} logger=%(name)s %(message)s"
        )
    )
    logging.basicConfig(level=level, handlers=[handler], force=True)
    if level != "DEBUG":
        handler.addFilter(PerConnectionAtDebug())
    # aiormq logs every reconnect attempt with a traceback at ERROR; one line is enough.
    logging.getLogger("aiormq").setLevel(logging.WARNING)
    # asyncpg's pool logs a traceback each time it fails to refill during a database
    # outage; the worker already logs one line per retry.
    logging.getLogger("asyncpg.pool").setLevel(logging.ERROR)
