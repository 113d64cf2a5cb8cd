"""Logging for every process: one key=value line per event, level from TAXI_LOG_LEVEL.

No secret reaches a log line: tokens in URLs (the WebSocket passes its token in the
query string, and uvicorn logs the path) are redacted before anything is written.
"""

from __future__ import annotations

import contextvars
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


# aio-pika's robust channels each log this at ERROR when their connection is lost: the
# channel cannot close on a connection already closed. It is restored on reconnection.
_CLOSED_CHANNEL_NOISE = "RobustChannel._on_close"


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


# Set inside the small uvicorn that serves a process's metrics (shared.metrics): its
# "Started server process", "Shutting down" and "Finished server process" would repeat
# the gateway's own uvicorn's, and name nothing a dispatcher's own line does not.
embedded_server: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "embedded_server", default=False
)


class EmbeddedServerQuiet(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not (
            embedded_server.get()
            and record.name == "uvicorn.error"
            and record.levelno <= logging.INFO
        )


class PerConnectionAtDebug(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return record.msg not in _PER_CONNECTION or record.levelno != logging.INFO


class RedactSecrets(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if message == _REFUSED_HANDSHAKE_NOISE or record.msg == _DROPPED_OFFER_NOISE:
            return False
        if record.name == "aio_pika.tools" and _CLOSED_CHANNEL_NOISE in message:
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
    handler.addFilter(EmbeddedServerQuiet())
    handler.setFormatter(
        logging.Formatter(
            f"%(asctime)s level=%(levelname)s process={process} logger=%(name)s %(message)s"
        )
    )
    logging.basicConfig(level=level, handlers=[handler], force=True)
    if level != "DEBUG":
        handler.addFilter(PerConnectionAtDebug())
    # A lost broker node: the project's own lines say it (shared.broker, one WARNING when
    # a process loses its node, one INFO naming the node it moved to). aiormq logs the
    # lost connection with a traceback at WARNING, aio-pika each reconnect attempt, and
    # each channel's close callback failing on the closed connection at ERROR.
    logging.getLogger("aiormq").setLevel(logging.WARNING)
    logging.getLogger("aiormq.connection").setLevel(logging.ERROR)
    logging.getLogger("aio_pika.robust_connection").setLevel(logging.ERROR)
    # asyncpg's pool logs a traceback each time it fails to refill during a database
    # outage; the worker already logs one line per retry.
    logging.getLogger("asyncpg.pool").setLevel(logging.ERROR)
