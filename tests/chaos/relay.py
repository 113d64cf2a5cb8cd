"""A TCP relay in front of a service that a test can cut: open connections drop and
new ones are refused, as when the service's host goes away; or hold: what the
service sends waits in the relay until released, as on a slow network. The service
itself, shared with everything else on the machine, is never touched."""

from __future__ import annotations

import asyncio
import contextlib


class Relay:
    def __init__(self, host: str, port: int) -> None:
        self._target = (host, port)
        self._server: asyncio.Server | None = None
        self._transports: set[asyncio.WriteTransport] = set()
        self._port = 0
        # Cleared while the service's replies are held back.
        self._flowing = asyncio.Event()
        self._flowing.set()

    async def start(self) -> int:
        """Listen on a free local port (the same one again after a cut) and return it."""
        self._server = await asyncio.start_server(self._connect, "127.0.0.1", self._port)
        self._port = int(self._server.sockets[0].getsockname()[1])
        return self._port

    async def restore(self) -> None:
        """Accept connections again on the same port, as when the service's host is back."""
        await self.start()

    def hold(self) -> None:
        """Keep what the service sends from reaching its clients until `release`."""
        self._flowing.clear()

    def release(self) -> None:
        self._flowing.set()

    async def cut(self) -> None:
        assert self._server is not None
        self._server.close()
        for transport in self._transports:
            transport.abort()
        self._transports.clear()

    async def _connect(
        self, client_in: asyncio.StreamReader, client_out: asyncio.StreamWriter
    ) -> None:
        try:
            service_in, service_out = await asyncio.open_connection(*self._target)
        except OSError:
            client_out.transport.abort()
            return
        self._transports |= {client_out.transport, service_out.transport}
        await asyncio.gather(
            self._pump(client_in, service_out),
            self._pump(service_in, client_out, self._flowing),
        )

    @staticmethod
    async def _pump(
        source: asyncio.StreamReader,
        sink: asyncio.StreamWriter,
        flowing: asyncio.Event | None = None,
    ) -> None:
        with contextlib.suppress(ConnectionError, OSError):
            while data := await source.read(65536):
                if flowing is not None:
                    await flowing.wait()
                sink.write(data)
                await sink.drain()
        sink.transport.abort()
