"""uvicorn's WebSocket protocol (websockets-sansio), with the limits a public gateway
needs on what the app never sees: control frames, and the connection's own buffer.

- A ping takes a token from the socket's rate limit (TAXI_RATE_LIMIT_PER_SECOND), the
  same bucket its frames take from (`RATE_LIMIT_EXTENSION`, read by the socket
  endpoint). A ping over the limit gets no pong; a client that goes on pinging over
  it is cut off with 4008, as one that goes on sending frames is.
- A pong is written only while the client reads: while the connection's outgoing
  buffer is above its high-water mark, a pong is dropped, so a client that pings and
  never reads cannot make the gateway hold its answers.
- When the app is done with a connection whose client does not read, the connection
  is aborted rather than closed: a close waits for the buffer to drain, which for
  such a client is never, and would hold its memory until the client left.
- Reading from the client pauses only when `READ_AHEAD` of its messages wait for the
  app, not after every message: uvicorn pauses and resumes reading around each one,
  two system calls per frame for a client that sends many small ones (a driver's
  location reports).
- A gateway holds tens of thousands of idle sockets, so each is lean: the messages
  waiting for the app and the "writable" flag are a list and a future, not an
  asyncio.Queue and Event (whose deques cost about 2.5 KB a socket even when empty),
  and the handshake's request and response (their headers) are let go once the
  socket is open.
"""

from __future__ import annotations

import asyncio
from typing import Any, Final

from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.http11 import Request

from gateway.live.rate_limit import TokenBucket
from shared.wire import CloseCode

# Where the socket endpoint finds the connection's rate limit in the ASGI scope.
RATE_LIMIT_EXTENSION: Final = "taxi.rate_limit"
# Pings over the limit in a row after which the client is cut off.
MAX_REFUSED_PINGS: Final = 10
# Messages from one client that may wait for the app before reading pauses.
READ_AHEAD: Final = 16


class LimitedWebSocketProtocol(WebSocketsSansIOProtocol):
    # Set by `limited_protocol` from the settings.
    rate_limit: tuple[int, int] = (20, 40)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.bucket = TokenBucket(*self.rate_limit)
        self.refused_pings = 0
        self.queue = _Waiting()  # type: ignore[assignment]
        self.writable = _Flag()  # type: ignore[assignment]

    async def send(self, message: Any) -> None:
        await super().send(message)
        if message["type"] == "websocket.accept":
            # Only the handshake needed them; the socket may live for hours.
            self.request = self.response = None  # type: ignore[assignment]

    def handle_connect(self, event: Request) -> None:
        super().handle_connect(event)
        scope = getattr(self, "scope", None)
        if scope is not None:
            scope["extensions"][RATE_LIMIT_EXTENSION] = self.bucket

    def handle_ping(self) -> None:
        # websockets answered the ping already; its pong waits in `data_to_send`.
        pong = b"".join(self.conn.data_to_send())
        if self.conn.close_rcvd is not None:
            self.transport.write(pong)  # a close came with it: that answer must go
            return
        if not self.bucket.take():
            self.refused_pings += 1
            if self.refused_pings > MAX_REFUSED_PINGS:
                self._cut_off(CloseCode.RATE_LIMITED, "rate limit exceeded")
            return
        self.refused_pings = 0
        if self.writable.is_set():
            self.transport.write(pong)

    def send_receive_event_to_app(self) -> None:
        # uvicorn's own pauses reading after every message; ours once READ_AHEAD wait.
        paused = self.read_paused
        self.read_paused = True  # keeps uvicorn's from pausing
        super().send_receive_event_to_app()
        self.read_paused = paused
        if not paused and self.queue.qsize() >= READ_AHEAD and not self.transport.is_closing():
            self.read_paused = True
            self.transport.pause_reading()

    async def run_asgi(self) -> None:
        await super().run_asgi()
        if not self.writable.is_set() and not self.disconnected:
            self.transport.abort()

    def _cut_off(self, code: int, reason: str) -> None:
        if self.close_sent or self.transport.is_closing():
            return
        self.queue.put_nowait({"type": "websocket.disconnect", "code": code, "reason": reason})
        self.conn.send_close(code, reason)
        if self.writable.is_set():
            self.transport.write(b"".join(self.conn.data_to_send()))
            self.transport.close()
        else:
            self.transport.abort()
        self.close_sent = True


class _Waiting:
    """The client's messages waiting for the app: what uvicorn asks of its queue."""

    __slots__ = ("_items", "_waiter")

    def __init__(self) -> None:
        self._items: list[Any] = []
        self._waiter: asyncio.Future[None] | None = None

    def put_nowait(self, item: Any) -> None:
        self._items.append(item)
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def get(self) -> Any:
        while not self._items:
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        # A list, not a deque: at most READ_AHEAD and a few more wait.
        return self._items.pop(0)

    def empty(self) -> bool:
        return not self._items

    def qsize(self) -> int:
        return len(self._items)


class _Flag:
    """Whether the connection takes more data now: what uvicorn asks of its Event."""

    __slots__ = ("_set", "_waiters")

    def __init__(self) -> None:
        self._set = True
        self._waiters: list[asyncio.Future[None]] | None = None

    def is_set(self) -> bool:
        return self._set

    def set(self) -> None:
        self._set = True
        waiters, self._waiters = self._waiters, None
        for waiter in waiters or ():
            if not waiter.done():
                waiter.set_result(None)

    def clear(self) -> None:
        self._set = False

    async def wait(self) -> None:
        while not self._set:
            waiter = asyncio.get_running_loop().create_future()
            if self._waiters is None:
                self._waiters = []
            self._waiters.append(waiter)
            await waiter


def limited_protocol(rate_limit: tuple[int, int]) -> type[LimitedWebSocketProtocol]:
    """The protocol class for uvicorn's `ws` setting, with this rate limit."""
    return type("LimitedWebSocketProtocol", (LimitedWebSocketProtocol,), {"rate_limit": rate_limit})
