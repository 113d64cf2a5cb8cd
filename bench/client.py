"""A bare WebSocket client for tens of thousands of sockets: the idle scenario's,
which only stay open, and the city scenario's, which also send and receive frames.

Each is an asyncio Protocol on one transport: the upgrade handshake, then a frame
parser that answers pings and the close handshake, and hands every message to a
callback (or only counts it). No task, queue or keepalive per socket, so one load
generator process holds 20,000 of them in a few hundred MB (the `websockets` client
the other traffic scenarios use keeps a task, buffers and a keepalive timer per
connection).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import resource
from collections.abc import Callable, Sequence
from typing import TypeVar
from urllib.parse import urlsplit

from websockets.typing import Subprotocol

OPEN_TIMEOUT_SECONDS = 60
CLOSE_TIMEOUT_SECONDS = 5
CONNECT_ATTEMPTS = 3
# Our own dialect (PROTOCOL D4), which every socket of the load generator asks for.
SUBPROTOCOL = "taxi.v2"
SUBPROTOCOLS = [Subprotocol(SUBPROTOCOL)]

CONTINUATION, TEXT, BINARY, CLOSE, PING, PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA
FIN = 0x80


def _masked(payload: bytes, mask: bytes) -> bytes:
    """`payload` XOR the 4-byte `mask` repeated, as one big-integer XOR (a byte loop in
    Python costs a microsecond a byte)."""
    if not payload:
        return payload
    size = len(payload)
    key = (mask * (size // 4 + 1))[:size]
    return (int.from_bytes(payload, "big") ^ int.from_bytes(key, "big")).to_bytes(size, "big")


class IdleSocket(asyncio.Protocol):
    """One client socket. `on_message(payload)` receives every text or binary message
    (reassembled if fragmented) as it arrives; without one they are only counted."""

    def __init__(
        self, host: str, path: str, on_message: Callable[[bytes], None] | None = None
    ) -> None:
        loop = asyncio.get_running_loop()
        self.on_message = on_message
        self._fragments: list[bytes] = []
        self.opened: asyncio.Future[None] = loop.create_future()
        self.closed: asyncio.Future[None] = loop.create_future()
        self.frames = 0
        self.close_code: int | None = None
        self.closed_by_server = False
        self._request = (
            f"GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\n"
            "Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
            f"Sec-WebSocket-Protocol: {SUBPROTOCOL}\r\n"
            f"Sec-WebSocket-Key: {base64.b64encode(os.urandom(16)).decode()}\r\n\r\n"
        ).encode()
        self._transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self._closing = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        transport.write(self._request)

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        if not self.opened.done():
            end = self._buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            status = bytes(self._buffer[: self._buffer.find(b"\r\n")])
            del self._buffer[: end + 4]
            if status.split(b" ")[1:2] != [b"101"]:
                self.opened.set_exception(ConnectionError(status.decode(errors="replace")))
                self._abort()
                return
            self.opened.set_result(None)
        self._read_frames()

    def _read_frames(self) -> None:
        buffer = self._buffer
        while len(buffer) >= 2:
            length, offset = buffer[1] & 0x7F, 2
            if length == 126:
                if len(buffer) < 4:
                    return
                length, offset = int.from_bytes(buffer[2:4], "big"), 4
            elif length == 127:
                if len(buffer) < 10:
                    return
                length, offset = int.from_bytes(buffer[2:10], "big"), 10
            mask = b""
            if buffer[1] & 0x80:  # servers do not mask, but a frame is a frame
                mask, offset = bytes(buffer[offset : offset + 4]), offset + 4
            if len(buffer) < offset + length:
                return
            payload = bytes(buffer[offset : offset + length])
            if mask:
                payload = _masked(payload, mask)
            opcode, final = buffer[0] & 0x0F, bool(buffer[0] & FIN)
            del buffer[: offset + length]
            if opcode == PING:
                self._send(PONG, payload)
            elif opcode == CLOSE:
                self.close_code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else None
                if not self._closing:
                    self.closed_by_server = True
                    self._send(CLOSE, payload[:2])
                if self._transport is not None:
                    self._transport.close()
            elif opcode in (TEXT, BINARY, CONTINUATION):
                self._message(payload, final)

    def _message(self, payload: bytes, final: bool) -> None:
        if not final or self._fragments:
            self._fragments.append(payload)
            if not final:
                return
            payload = b"".join(self._fragments)
            self._fragments.clear()
        self.frames += 1
        if self.on_message is not None:
            self.on_message(payload)

    def send_text(self, text: bytes) -> bool:
        """One text message (UTF-8 `text`); whether the socket could take it."""
        return self._send(TEXT, text)

    def _send(self, opcode: int, payload: bytes) -> bool:
        """One frame, masked as every client frame must be."""
        if self._transport is None or self._transport.is_closing():
            return False
        mask = os.urandom(4)
        size = len(payload)
        if size < 126:
            header = bytes([FIN | opcode, 0x80 | size])
        elif size < 2**16:
            header = bytes([FIN | opcode, 0x80 | 126]) + size.to_bytes(2, "big")
        else:
            header = bytes([FIN | opcode, 0x80 | 127]) + size.to_bytes(8, "big")
        self._transport.write(header + mask + _masked(payload, mask))
        return True

    def _abort(self) -> None:
        if self._transport is not None:
            self._transport.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.opened.done():
            self.opened.set_exception(exc or ConnectionError("closed during the handshake"))
        if not self.closed.done():
            self.closed.set_result(None)

    async def close(self) -> None:
        """The close handshake (1000), or an abort if the server does not answer."""
        if self.closed.done():
            return
        self._closing = True
        self._send(CLOSE, (1000).to_bytes(2, "big"))
        try:
            await asyncio.wait_for(asyncio.shield(self.closed), CLOSE_TIMEOUT_SECONDS)
        except TimeoutError:
            self._abort()


SocketT = TypeVar("SocketT", bound=IdleSocket)


async def open_sockets(
    base_url: str,
    tokens: list[str],
    make: Callable[[str, str, int], SocketT],
    concurrency: int = 64,
) -> list[SocketT | None]:
    """One socket per token to `<base_url>/taxi/`, in the tokens' order: socket i is
    `make(host, path, i)`, or None if it could not be opened (after a few attempts)."""
    parts = urlsplit(base_url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    loop = asyncio.get_running_loop()
    gate = asyncio.Semaphore(concurrency)

    async def one(index: int, token: str) -> SocketT | None:
        async with gate:
            for _ in range(CONNECT_ATTEMPTS):
                with contextlib.suppress(OSError, TimeoutError):
                    _, protocol = await loop.create_connection(
                        lambda: make(f"{host}:{port}", f"/taxi/?token={token}", index), host, port
                    )
                    try:
                        await asyncio.wait_for(protocol.opened, OPEN_TIMEOUT_SECONDS)
                    except BaseException:
                        protocol._abort()
                        raise
                    return protocol
                await asyncio.sleep(0.5)
        return None

    return list(await asyncio.gather(*(one(i, token) for i, token in enumerate(tokens))))


async def open_idle(
    base_url: str, tokens: list[str], concurrency: int = 64
) -> tuple[list[IdleSocket], int]:
    """One socket per token to `<base_url>/taxi/`; the sockets opened and how many
    could not be (after a few attempts each)."""
    opened = await open_sockets(
        base_url, tokens, lambda host, path, _: IdleSocket(host, path), concurrency
    )
    sockets = [s for s in opened if s is not None]
    return sockets, len(tokens) - len(sockets)


async def close_all(sockets: Sequence[IdleSocket], concurrency: int = 256) -> None:
    gate = asyncio.Semaphore(concurrency)

    async def one(socket: IdleSocket) -> None:
        async with gate:
            await socket.close()

    await asyncio.gather(*(one(socket) for socket in sockets))


def raise_open_files_limit(wanted: int) -> int:
    """Raise this process's open-files limit (children inherit it) to `wanted` if it
    can: the hard limit too where allowed (root), else up to the hard limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= wanted:
        return soft
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, max(hard, wanted)))
    except (ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]
