"""The one place that wires the gateway: `create_app(settings)`."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Match, Mount, Route, WebSocketRoute
from starlette.staticfiles import StaticFiles
from starlette.types import Receive, Scope, Send
from starlette.websockets import WebSocket

from gateway.live.broker import GatewayBroker
from gateway.live.connected import ConnectedUsers
from gateway.live.inbox import Inbox, forward
from gateway.live.locations import DriverLocations
from gateway.live.notification_log import NotificationLog
from gateway.live.offers import OfferFanout
from gateway.live.open_sockets import OpenSockets
from gateway.live.presence import Presence, round_seconds
from gateway.live.revocations import Revocations
from gateway.live.websocket import TaxiSocket
from gateway.responses import OrjsonResponse
from gateway.tokens import TokenService
from gateway.users import UserRepository
from gateway.web.description import routes as description_routes
from gateway.web.errors import ApiError, api_error_handler, http_error_handler
from gateway.web.http_api import MAX_JSON_BODY_BYTES, AuthApi
from gateway.web.http_guards import BodyLimit, Cors, SecurityHeaders
from gateway.web.media import MEDIA_URL, PhotoStore
from gateway.web.passwords import Passwords
from gateway.web.sessions import Sessions
from gateway.web.throttle import Throttle
from gateway.web.trips_api import TripsApi
from shared import gc_pauses, metrics
from shared.database_watch import DatabaseWatch
from shared.db import DATABASE_OUTAGE, Database
from shared.settings import Settings
from shared.wire import ErrorCode

log = logging.getLogger(__name__)

# The browser client: static files, served at the root.
CLIENT_DIR = Path(__file__).with_name("client")
SOCKET_PATH = "/taxi/"
# The cyclic collector's thresholds (Python's are 700, 10, 10). A full collection walks
# every socket's objects: with 10,000 sockets, 0.25 to over 1 s each. With the
# defaults, objects that live a few seconds (a driver's latest report, say) reached
# the oldest generation and brought one on every half minute or so. Young collections
# ten times rarer let such objects die young: in the city benchmark at 10,000
# drivers, 1 full collection in the gateway's first six minutes instead of 15, and
# 2.6 s of collecting in all instead of 9 (`taxi_gc_pause_seconds`; docs/benchmarks.md).
GC_THRESHOLDS = (7_000, 10, 10)


class ClientFiles(Mount):
    """The browser client's files, at every path but the API's: under /api/ a wrong
    method is a 405 naming the allowed ones and an unknown path a 404, never a file
    lookup."""

    def matches(self, scope: Scope) -> tuple[Match, Scope]:
        if scope["type"] == "http" and scope["path"].startswith("/api/"):
            return Match.NONE, {}
        return super().matches(scope)


class Gateway(Starlette):
    """Starlette, except that sockets at SOCKET_PATH go straight to their endpoint.

    An open socket keeps its whole call chain alive for as long as it lasts: through
    Starlette's error and exception middleware and its router, that chain cost about
    2.5 KB a socket, a tenth of what a gateway holds per connection (measured with
    tracemalloc over 2,000 sockets). The endpoint refuses and ends sockets itself and
    needs none of it; the route stays in `routes`, where it is documented and listed.
    """

    def __init__(self, *, socket_endpoint: Callable[[WebSocket], Awaitable[None]], **kwargs: Any):
        super().__init__(**kwargs)
        self._socket_endpoint = socket_endpoint

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket" and scope["path"] == SOCKET_PATH:
            scope["app"] = self
            await self._socket_endpoint(WebSocket(scope, receive, send))
            return
        await super().__call__(scope, receive, send)


def create_app(settings: Settings, metrics_listener: socket.socket | None = None) -> Starlette:
    """The gateway's public app. Its metrics are served apart, on `metrics_listener`
    (bound by the caller, so a taken port stops it before anything starts) or else
    on TAXI_HOST:TAXI_METRICS_PORT, bound when the app starts."""
    database = Database(settings)
    broker = GatewayBroker(settings)
    users = UserRepository(database)
    tokens = TokenService(
        settings.jwt_secret,
        access_seconds=settings.access_token_minutes * 60,
        refresh_seconds=settings.refresh_token_days * 24 * 3600,
    )
    sessions = Sessions(database, tokens, users)
    photos = PhotoStore(settings.media_dir, settings.max_photo_bytes, settings.photo_max_pixels)
    throttle = Throttle(
        database,
        login_attempts=settings.login_attempts,
        signup_attempts=settings.signup_attempts,
        window_seconds=settings.login_window_seconds,
    )
    notification_log = NotificationLog(database)
    connected = ConnectedUsers(broker.bind_user, broker.unbind_user, notification_log)
    offers = OfferFanout(connected)
    locations = DriverLocations(broker)
    # Dispatch learns at once that a driver took or finished a trip, however the
    # gateway learned it (live, or read back from the log).
    connected.trip_changed = locations.trip_changed
    inbox = Inbox(connected, offers, locations)
    open_sockets = OpenSockets(database, broker.gateway_id, settings.max_sockets_per_user)
    taxi_socket = TaxiSocket(
        tokens,
        users,
        broker,
        connected,
        notification_log,
        locations,
        open_sockets,
        rate_limit=(settings.rate_limit_per_second, settings.rate_limit_burst),
        slow_client_seconds=settings.slow_client_seconds,
    )
    # Checked twice within the time allowed, so a socket closes well within it.
    revocations = Revocations(
        database,
        connected,
        settings.revoke_seconds / 2,
        # An ended session's record outlives every token it could refuse.
        keep_seconds=settings.access_token_minutes * 60 + settings.refresh_token_days * 86400,
    )
    Path(settings.media_dir).mkdir(parents=True, exist_ok=True)

    async def healthz(request: Request) -> Response:
        return OrjsonResponse({"status": "ok"})

    async def client_config(request: Request) -> Response:
        """What the browser client needs to know of this deployment."""
        return OrjsonResponse(
            {"map_tiles_url": settings.map_tiles_url, "offer_seconds": settings.offer_seconds}
        )

    async def readyz(request: Request) -> Response:
        checks = {"database": await database.is_reachable(), "broker": broker.is_connected}
        return OrjsonResponse(checks, status_code=200 if all(checks.values()) else 503)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        # Metrics on their own port, never on the public one.
        listener = metrics_listener
        if listener is None:
            listener = metrics.bind(settings.host, settings.metrics_port)
        async with metrics.serving(metrics.metrics_app(), listener), running():
            yield

    @asynccontextmanager
    async def running() -> AsyncIterator[None]:
        await database.start()
        try:
            await open_sockets.start()
            await broker.start()
            offer_messages = broker.offers()
            notifications = broker.notifications()
            # Consume before the tasks start, so cancelling one never interrupts a broker call.
            await offer_messages.consume()
            await notifications.consume()
            tasks = [
                asyncio.create_task(forward(offer_messages, offers.broadcast)),
                asyncio.create_task(forward(notifications, inbox.route)),
                asyncio.create_task(locations.run()),
                asyncio.create_task(revocations.run()),
                asyncio.create_task(Presence(database, connected, round_seconds(settings)).run()),
                asyncio.create_task(open_sockets.run()),
                # Twice within the time allowed, so a stalled socket closes well within it.
                asyncio.create_task(
                    connected.check_drained_every(settings.slow_client_seconds / 2)
                ),
                # Whether its database is the primary, and failovers, for the dashboard.
                asyncio.create_task(DatabaseWatch(database).run()),
            ]
            broker.on_reconnect(connected.catch_up_all)
            # Modules, pools and routes live as long as the process: keep the cyclic
            # collector from walking them on every full collection (its pauses
            # otherwise show up in the latency tail).
            gc.freeze()
            gc.set_threshold(*GC_THRESHOLDS)
            gc_pauses.watch()
            try:
                log.info("gateway ready on http://%s:%s", settings.host, settings.port)
                yield
            finally:
                for task in tasks:
                    task.cancel()
                await broker.close()
                with contextlib.suppress(*DATABASE_OUTAGE):
                    await open_sockets.stop()
        finally:
            await database.close()

    routes = [
        *AuthApi(users, sessions, photos, Passwords(settings.password_hashing), throttle).routes(),
        *TripsApi(database, users, tokens).routes(),
        WebSocketRoute(SOCKET_PATH, taxi_socket.endpoint),
        Route("/api/client-config/", client_config),
        Route("/healthz", healthz),
        Route("/readyz", readyz),
        *description_routes(),
        Mount(MEDIA_URL, StaticFiles(directory=settings.media_dir), name="media"),
        ClientFiles("/", StaticFiles(directory=CLIENT_DIR, html=True), name="client"),
    ]
    app = Gateway(
        socket_endpoint=taxi_socket.endpoint,
        routes=routes,
        lifespan=lifespan,
        middleware=[
            Middleware(SecurityHeaders, tiles_url=settings.map_tiles_url),
            # Inside the security headers (pre-flights carry them too), outside the body
            # limit (a 413 names the origin, so the page can read it).
            *cors(settings),
            Middleware(BodyLimit, limit_for=body_limits(settings)),
        ],
        exception_handlers={
            ApiError: api_error_handler,
            HTTPException: http_error_handler,
            **dict.fromkeys(DATABASE_OUTAGE, database_unavailable_handler),
        },
    )
    # The server calls this on SIGTERM, before it stops the event loop.
    app.state.close_sockets = taxi_socket.close_all
    return app


def cors(settings: Settings) -> list[Middleware]:
    """Cross-origin calls for the origins of TAXI_CORS_ORIGINS; none when it is empty
    (then an OPTIONS request is a 405 like any other method the path does not take)."""
    origins = settings.cors_origin_list
    return [Middleware(Cors, origins=origins)] if origins else []


def body_limits(settings: Settings) -> Callable[[str, str], int]:
    """The largest body each endpoint takes: a sign-up form carries a photo, nothing
    else more than a small JSON object."""

    def limit_for(path: str, content_type: str) -> int:
        if path == "/api/sign_up/" and content_type.startswith("multipart/"):
            return settings.max_photo_bytes + MAX_JSON_BODY_BYTES
        return MAX_JSON_BODY_BYTES

    return limit_for


async def database_unavailable_handler(request: Request, exc: Exception) -> Response:
    log.warning("request failed, database unavailable path=%s error=%r", request.url.path, exc)
    return ApiError(
        503, ErrorCode.UNAVAILABLE, "the database is unavailable; retry shortly"
    ).response()
