"""What every HTTP request and response of the gateway goes through.

- `BodyLimit`: a body larger than its endpoint's cap is refused with 413 as soon as
  it is declared or, when it is sent in chunks, as soon as the bytes received pass
  the cap: nobody fills the server's memory or disk, whatever the encoding.
- `SecurityHeaders`: every response says what the browser may do with it: scripts,
  styles and connections only from this origin, images also from the map's tile
  server, never framed, never sniffed into another type, and no referrer sent along.
"""

from __future__ import annotations

from collections.abc import Callable
from urllib.parse import urlsplit

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.errors import ApiError, HttpCode


def too_large(limit: int) -> ApiError:
    return ApiError(
        413,
        HttpCode.PAYLOAD_TOO_LARGE,
        f"the body is larger than this endpoint takes ({limit} bytes)",
    )


class BodyLimit:
    def __init__(self, app: ASGIApp, limit_for: Callable[[str, str], int]) -> None:
        self._app = app
        self._limit_for = limit_for

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        content_type = headers.get(b"content-type", b"").decode("latin-1")
        limit = self._limit_for(scope["path"], content_type.split(";")[0].strip().lower())
        declared = headers.get(b"content-length", b"")
        if declared.isdigit() and int(declared) > limit:
            await too_large(limit).response()(scope, receive, send)
            return
        received = 0

        async def counted() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    # Raised into whoever reads the body; the app answers it as any ApiError.
                    raise too_large(limit)
            return message

        await self._app(scope, counted, send)


class SecurityHeaders:
    def __init__(self, app: ASGIApp, tiles_url: str) -> None:
        self._app = app
        tiles = urlsplit(tiles_url)
        tile_origin = f"{tiles.scheme}://{tiles.netloc}"
        self._headers = {
            "Content-Security-Policy": (
                "default-src 'self'; "
                f"img-src 'self' data: blob: {tile_origin}; "
                "style-src 'self'; script-src 'self'; connect-src 'self'; "
                "object-src 'none'; base-uri 'none'; form-action 'self'; "
                "frame-ancestors 'none'"
            ),
            "X-Content-Type-Options": "nosniff",
            "X-Frame-Options": "DENY",
            "Referrer-Policy": "no-referrer",
        }

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in self._headers.items():
                    headers.setdefault(name, value)
            await send(message)

        await self._app(scope, receive, with_headers)
