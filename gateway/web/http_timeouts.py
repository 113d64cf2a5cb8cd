"""Bounded reading of HTTP requests (PROTOCOL D1, "HTTP abuse"): a request whose
headers or body arrive too slowly is cut off.

uvicorn times out a keep-alive connection only once it has answered a request on it
(`timeout_keep_alive`): a connection that never sends a whole request (opened and
left idle, or sending its headers a byte at a time) is held for ever, and so is one
that trickles its body. Its httptools protocol, subclassed here, adds two deadlines:

- headers: a request's headers must be complete within `read_seconds` of the
  connection opening, or of the first byte of the request after it;
- body: a request's body must be complete within `read_seconds` of its headers,
  plus one second for every `BODY_BYTES_PER_SECOND` bytes received (a 5 MB photo on
  a slow link is fine; a byte every few seconds is not).

A request past its deadline gets 408 if nothing was answered yet, and the connection
is closed (one that never began a request is closed without a word). After a 408 the
close lingers: the gateway stops writing, then reads and drops what the client still
sends for up to LINGER_SECONDS. Closed at once with the client's last bytes unread,
the connection would be reset, and a client still sending could lose the 408 before
reading it (seen with a client on a busy machine). A WebSocket
handshake ends the HTTP part: once upgraded, a socket lives as long as it needs to
(its own limits are the socket endpoint's).
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

# The slowest body a client may send, once `read_seconds` are spent.
BODY_BYTES_PER_SECOND = 8 * 1024
# After a 408, how long what the client still sends is read and dropped.
LINGER_SECONDS = 2.0

_TIMED_OUT_BODY = (
    b'{"detail": "the request arrived too slowly and was cut off", "code": "request_timeout"}'
)
TIMED_OUT = (
    b"HTTP/1.1 408 Request Timeout\r\n"
    b"content-type: application/json\r\n"
    b"connection: close\r\n"
    b"content-length: %d\r\n"
    b"\r\n"
    b"%s"
) % (len(_TIMED_OUT_BODY), _TIMED_OUT_BODY)


def bounded_http(read_seconds: float) -> type[HttpToolsProtocol]:
    """uvicorn's httptools protocol with the deadlines above."""

    class BoundedHttpToolsProtocol(_Bounded):
        pass

    BoundedHttpToolsProtocol.read_seconds = read_seconds
    return BoundedHttpToolsProtocol


class _Bounded(HttpToolsProtocol):
    read_seconds: float = 10.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._deadline: asyncio.TimerHandle | None = None
        self._body_started = 0.0
        self._body_received = 0
        self._reading_body = False
        self._in_request = False
        self._lingering = False

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm(self.read_seconds)

    def data_received(self, data: bytes) -> None:
        if self._lingering:
            return  # answered with 408: what still comes is dropped
        super().data_received(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._in_request = True
        if self._deadline is None:  # the first request keeps the connection's deadline
            self._arm(self.read_seconds)

    def on_headers_complete(self) -> None:
        self._disarm()
        super().on_headers_complete()
        if not (self.parser.should_upgrade() and self._should_upgrade()):
            self._reading_body = True
            self._body_started = self.loop.time()
            self._body_received = 0
            self._arm(self.read_seconds)

    def on_body(self, body: bytes) -> None:
        super().on_body(body)
        if self._reading_body:
            self._body_received += len(body)

    def on_message_complete(self) -> None:
        self._in_request = self._reading_body = False
        self._disarm()
        super().on_message_complete()

    def handle_websocket_upgrade(self) -> None:
        self._disarm()
        super().handle_websocket_upgrade()

    def _arm(self, seconds: float) -> None:
        self._disarm()
        self._deadline = self.loop.call_later(seconds, self._on_deadline)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _on_deadline(self) -> None:
        self._deadline = None
        if self.transport.is_closing():
            return
        if self._reading_body:
            # A body that keeps coming at the least rate has earned more time.
            allowed = self.read_seconds + self._body_received / BODY_BYTES_PER_SECOND
            remaining = self._body_started + allowed - self.loop.time()
            if remaining > 0:
                self._arm(remaining)
                return
        if self._in_request and (self.cycle is None or not self.cycle.response_started):
            self.transport.write(TIMED_OUT)
            self._linger()
            return
        self.transport.close()

    def _linger(self) -> None:
        self._lingering = True
        if self.transport.can_write_eof():
            self.transport.write_eof()
        self.loop.call_later(LINGER_SECONDS, self.transport.close)
