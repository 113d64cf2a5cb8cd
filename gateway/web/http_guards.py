"""What every HTTP request and response of the gateway goes through.

- `BodyLimit`: a body larger than its endpoint's cap is refused with 413 as soon as
  it is declared or, when it is sent in chunks, as soon as the bytes received pass
  the cap: nobody fills the server's memory or disk, whatever the encoding.
- `SecurityHeaders`: every response says what the browser may do with it: scripts,
  styles and connections only from this origin, images also from the map's tile
  server, never framed, never sniffed into another type, and no referrer sent along.
- `Cors`: pages from the origins of TAXI_CORS_ORIGINS (the course's React client on
  `localhost:3001`, say) may call the API: pre-flights are answered, and answers name
  the origin. Starlette's `CORSMiddleware`, except that a refused pre-flight is a JSON
  error like every other.
"""

from __future__ import annotations

from collections.abc import Callable
from urllib.parse import urlsplit

from starlette.datastructures import Headers, MutableHeaders
from starlette.middleware.cors import CORSMiddleware
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.web.course_forms import speaks_course_forms
from gateway.web.errors import ApiError, HttpCode
from shared.wire import ErrorCode

# What a page from an allowed origin may do: the API's methods and the headers its
# clients send; what it may read besides the safelisted headers: the next page of
# trips and how long to wait after a 429.
CORS_METHODS = ("GET", "POST")
CORS_HEADERS = ("Authorization", "Content-Type")
CORS_EXPOSED = ("Link", "Retry-After")


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
            accept = headers.get(b"accept", b"").decode("latin-1")
            course_form = speaks_course_forms(scope["path"], accept)
            await too_large(limit).response(course_form=course_form)(scope, receive, send)
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


class Cors(CORSMiddleware):
    def __init__(self, app: ASGIApp, origins: list[str]) -> None:
        super().__init__(
            app,
            allow_origins=origins,
            allow_methods=CORS_METHODS,
            allow_headers=CORS_HEADERS,
            expose_headers=CORS_EXPOSED,
        )

    def preflight_response(self, request_headers: Headers) -> Response:
        response = super().preflight_response(request_headers)
        if response.status_code == 200:
            return response
        # Starlette says what it refused in plain text ("Disallowed CORS origin, method").
        refused = bytes(response.body).decode().removeprefix("Disallowed CORS ")
        return ApiError(
            403,
            ErrorCode.FORBIDDEN,
            f"this cross-origin request is not allowed (its {refused}); allowed origins "
            "are set by TAXI_CORS_ORIGINS",
        ).response()
