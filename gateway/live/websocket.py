"""The `/taxi/` WebSocket: authenticate, then bridge the socket and the user's
notifications.

Handshakes with a bad token (401) or a bad `since` (400) are refused before the
upgrade. Once open, every frame from the client is validated; a bad one gets an
`error` frame and the connection stays open. Commands are stamped with the user and
a message id and published. The socket first gets what its user missed (after
`since`, or after where their last socket left off), then every notification of the
user as it arrives (`gateway.live.connected`), each written by the socket's own writer
(`gateway.live.outgoing`). Drivers also get offers (`gateway.live.offers`) while they are free,
and report where they are (`gateway.live.locations`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable

from aio_pika.exceptions import AMQPError
from opentelemetry.trace import SpanKind
from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState

from gateway.live import metrics
from gateway.live.broker import GatewayBroker, PublishFailed
from gateway.live.connected import ConnectedUser, ConnectedUsers
from gateway.live.course_frames import OUR_SUBPROTOCOL, course_frame
from gateway.live.locations import DriverLocations
from gateway.live.notification_log import NotificationLog, ResumePoint
from gateway.live.open_sockets import OpenSockets, Replaced
from gateway.live.outgoing import Frame, Outgoing
from gateway.live.rate_limit import TokenBucket
from gateway.live.socket_protocol import RATE_LIMIT_EXTENSION
from gateway.responses import OrjsonResponse
from gateway.tokens import TokenClaims, TokenError, TokenService
from gateway.users import UserRepository
from shared import tracing, wire
from shared.commands import COMMAND_TYPES, UPDATE_LOCATION, new_command, new_location
from shared.db import DATABASE_OUTAGE
from shared.users import User
from shared.wire import ClientFrame, CloseCode, ErrorCode, FrameError

log = logging.getLogger(__name__)

FrameHandler = Callable[[Outgoing, ConnectedUser, ClientFrame], Awaitable[None]]

# Failures that end the connection rather than one frame.
_CONNECTION_LEVEL: tuple[type[BaseException], ...] = (WebSocketDisconnect, *DATABASE_OUTAGE)
# What an unreachable or restarting RabbitMQ looks like to a broker call.
BROKER_OUTAGE: tuple[type[BaseException], ...] = (AMQPError, ConnectionError, RuntimeError)
# How a socket that went away shows itself to its writer.
_SOCKET_GONE: tuple[type[BaseException], ...] = (WebSocketDisconnect, RuntimeError, OSError)

# A client that keeps sending after this many refused frames in a row is cut off.
MAX_RATE_LIMITED_FRAMES = 10
# A client that reads nothing may never take a close frame either.
CLOSE_TIMEOUT_SECONDS = 1
# How long a socket being cut off gets to take the frames queued before its close.
FLUSH_SECONDS = 5
# The largest `since` accepted: a sequence number fits in a bigint.
MAX_SEQ = 2**63 - 1
# What a socket's end says when no close frame came from the client: 1005 (none
# received) and 1006 (the connection was lost).
_NO_CLOSE_FRAME = frozenset({1005, 1006})


class TaxiSocket:
    def __init__(
        self,
        tokens: TokenService,
        users: UserRepository,
        broker: GatewayBroker,
        connected: ConnectedUsers,
        log_reader: NotificationLog,
        locations: DriverLocations,
        open_sockets: OpenSockets,
        *,
        rate_limit: tuple[int, int],
        slow_client_seconds: float,
    ) -> None:
        self._tokens = tokens
        self._users = users
        self._broker = broker
        self._connected = connected
        self._log = log_reader
        self._locations = locations
        self._open_sockets = open_sockets
        self._rate_limit = rate_limit
        self._slow_client_seconds = slow_client_seconds
        self._open: set[WebSocket] = set()
        self._shutting_down = False
        self._handlers: dict[str, FrameHandler] = {
            "echo.message": self._echo,
            UPDATE_LOCATION: self._location,
        }
        self._handlers.update(dict.fromkeys(COMMAND_TYPES, self._command))

    async def close_all(self) -> None:
        """Tell every connected client the server is going away (1001), before shutdown:
        all at once, so tens of thousands of sockets close within the grace period
        instead of one after another past it."""

        async def close(websocket: WebSocket) -> None:
            # A socket that is already gone must not stop the others being told.
            with contextlib.suppress(Exception):
                await asyncio.wait_for(
                    websocket.close(CloseCode.GOING_AWAY, "server shutting down"),
                    CLOSE_TIMEOUT_SECONDS,
                )

        self._shutting_down = True
        await asyncio.gather(*(close(websocket) for websocket in list(self._open)))

    async def endpoint(self, websocket: WebSocket) -> None:
        """One socket, from handshake to close. A client that goes away at any point
        (mid-handshake, mid-send) is one INFO line, never a traceback."""
        try:
            await self._handle(websocket)
        except _SOCKET_GONE as gone:
            log.info(
                "socket dropped by the client path=%s client=%s error=%s",
                websocket.url.path,
                _client(websocket),
                type(gone).__name__,
            )

    async def _handle(self, websocket: WebSocket) -> None:
        try:
            since = _since(websocket)
            authenticated = await self._authenticate(websocket)
        except FrameError as refusal:
            await _refuse(websocket, 400, refusal.message, refusal.code)
            return
        except DATABASE_OUTAGE as exc:
            log.warning("handshake refused, database unavailable error=%r", exc)
            await _refuse(
                websocket, 503, "database unavailable, retry shortly", ErrorCode.UNAVAILABLE
            )
            return
        if authenticated is None:
            return
        user, claims = authenticated
        # This gateway receives the user's notifications from before the resume point
        # is read: whatever is committed later arrives live, the rest is in the log.
        try:
            connected = await self._connected.join(user)
        except BROKER_OUTAGE as exc:
            log.warning("handshake refused, broker unavailable error=%r", exc)
            await _refuse(
                websocket, 503, "broker unavailable, retry shortly", ErrorCode.UNAVAILABLE
            )
            return
        try:
            point = await self._log.resume_point(user.id)
            if since is not None and since > point.last_seq:
                await _refuse(
                    websocket,
                    400,
                    f"since={since} is ahead of your latest notification ({point.last_seq})",
                    ErrorCode.INVALID_DATA,
                )
                return
            connected.start_from(point)
            # Our own dialect for clients that ask for it; the course's for the others.
            asked = websocket.scope.get("subprotocols", [])
            dialect = OUR_SUBPROTOCOL if OUR_SUBPROTOCOL in asked else None
            await websocket.accept(subprotocol=dialect)
            _forget_handshake(websocket)
            await self._serve(
                websocket, connected, _resume_after(since, point), claims, course=dialect is None
            )
        except DATABASE_OUTAGE as exc:
            log.warning("socket ended, database unavailable user_id=%s error=%r", user.id, exc)
            if websocket.client_state is WebSocketState.CONNECTING:
                await _refuse(
                    websocket, 503, "database unavailable, retry shortly", ErrorCode.UNAVAILABLE
                )
        finally:
            if await self._connected.leave(connected):
                self._locations.gone(connected)

    async def _serve(
        self,
        websocket: WebSocket,
        connected: ConnectedUser,
        resume: tuple[int, int | None],
        claims: TokenClaims,
        *,
        course: bool,
    ) -> None:
        user = connected.user
        sent_up_to, resync_from = resume
        outgoing = Outgoing(
            user.id,
            websocket.send_text,
            connected.history,
            sent_up_to=sent_up_to,
            slow_seconds=self._slow_client_seconds,
            close=websocket.close,
            dialect=course_frame if course else None,
            issued_at=claims.issued_at,
            session=claims.session,
        )
        if resync_from is not None:
            outgoing.put(Frame(wire.resync_frame(resync_from).decode(), "resync"))
        connections = metrics.OPEN_CONNECTIONS.labels(user.group)
        connections.inc()
        log.debug("socket opened user_id=%s group=%s", user.id, user.group)
        connected.sockets.add(outgoing)
        self._open.add(websocket)
        client_closed = False
        try:
            # Counted with the user's sockets on every gateway only now that it can be
            # told to close: beyond the limit, their oldest make room (most likely a
            # tab or phone they left; a new socket is never the one refused).
            await self._make_room(connected, await self._open_sockets.opened(user.id, outgoing.id))
            client_closed = await self._until_closed(websocket, connected, outgoing)
        finally:
            self._open.discard(websocket)
            connected.sockets.discard(outgoing)
            connections.dec()
            with contextlib.suppress(*DATABASE_OUTAGE):
                await self._open_sockets.closed(outgoing.id)
        # Where a later socket without `since` starts: only a close the client asked
        # for says it read what it was sent. After a reset, a server-side close or a
        # shutdown it may not have, so the next socket is sent it again (a repeat is
        # harmless to a client that upserts; a loss is not).
        if client_closed and not self._shutting_down:
            with contextlib.suppress(*DATABASE_OUTAGE):
                await self._log.record_delivered(user.id, outgoing.sent_up_to)
        log.debug("socket closed user_id=%s", user.id)

    async def _make_room(self, connected: ConnectedUser, replaced: Replaced) -> None:
        """Close the sockets that made room for a new one: those here at once, those on
        other gateways by a word to each gateway holding the user's sockets."""
        here = self._open_sockets.gateway_id
        connected.replace({socket_id for socket_id, gateway in replaced if gateway == here})
        elsewhere = [socket_id for socket_id, gateway in replaced if gateway != here]
        if elsewhere:
            try:
                await self._broker.publish_replaced(connected.user.id, elsewhere)
            except BROKER_OUTAGE as exc:
                log.warning("sockets elsewhere not told to make room error=%r", exc)

    async def _until_closed(
        self, websocket: WebSocket, connected: ConnectedUser, outgoing: Outgoing
    ) -> bool:
        """Read the client's frames and write the socket's own, until either side ends:
        the client goes, a send fails, or the client reads too slowly (4010). True if
        the client closed the socket with a close frame of its own."""
        user = connected.user
        tasks = [
            asyncio.create_task(self._receive(websocket, connected, outgoing)),
            asyncio.create_task(outgoing.run()),
        ]
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            if tasks[0] in done and outgoing.closing:
                # The client is being cut off: its writer sends what was queued, then closes.
                await asyncio.wait(tasks[1:], timeout=FLUSH_SECONDS)
        finally:
            for task in tasks:
                task.cancel()
            outcomes = await asyncio.gather(*tasks, return_exceptions=True)
        for outcome in outcomes:
            if isinstance(outcome, Exception) and not isinstance(outcome, _SOCKET_GONE):
                log.warning("socket ended by an error user_id=%s error=%r", user.id, outcome)
        if outgoing.too_slow:
            log.info("socket closed for reading too slowly user_id=%s", user.id)
            with contextlib.suppress(Exception):
                await asyncio.wait_for(
                    websocket.close(CloseCode.TOO_SLOW, "too slow"), CLOSE_TIMEOUT_SECONDS
                )
            return False
        code = outcomes[0]
        return isinstance(code, int) and code not in _NO_CLOSE_FRAME and not outgoing.closing

    async def _authenticate(self, websocket: WebSocket) -> tuple[User, TokenClaims] | None:
        """The connecting user and their token's claims (when it was issued, its session),
        or None after refusing the handshake with 401."""
        token = websocket.query_params.get("token")
        reason = "a token is required: connect to /taxi/?token=<access token>"
        if token:
            try:
                claims = self._tokens.verify(token, "access")
            except TokenError as exc:
                reason = str(exc)
            else:
                user = await self._users.active(claims.user_id, claims.issued_at, claims.session)
                if user is not None:
                    return user, claims
                reason = "this account does not exist or is no longer active"
        await _refuse(websocket, 401, reason, "token_not_valid")
        return None

    async def _receive(
        self, websocket: WebSocket, connected: ConnectedUser, outgoing: Outgoing
    ) -> int | None:
        """The client's frames, each handled in turn, until it goes: the close code."""
        user = connected.user
        # The connection's own bucket, which its pings take from too
        # (`gateway.live.socket_protocol`).
        bucket = websocket.scope["extensions"].get(RATE_LIMIT_EXTENSION) or TokenBucket(
            *self._rate_limit
        )
        refused_in_a_row = 0
        while True:
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                code = message.get("code")
                return code if isinstance(code, int) else None
            if not bucket.take():
                refused_in_a_row += 1
                if refused_in_a_row > MAX_RATE_LIMITED_FRAMES:
                    log.warning("socket cut off for flooding user_id=%s", user.id)
                    outgoing.close_after_sending(CloseCode.RATE_LIMITED, "rate limit exceeded")
                    return None
                reply_error(
                    outgoing,
                    FrameError(
                        ErrorCode.RATE_LIMITED,
                        f"too many frames: at most {self._rate_limit[0]} per second; "
                        "this frame was dropped",
                    ),
                )
                continue
            refused_in_a_row = 0
            text = message.get("text")
            frame: ClientFrame | None = None
            try:
                if text is None:
                    raise FrameError(
                        ErrorCode.INVALID_FRAME, "binary frames are not accepted; send JSON text"
                    )
                frame = wire.decode_frame(text)
                metrics.frame_in(frame.type)
                handler = self._handlers.get(frame.type)
                if handler is None:
                    raise FrameError(
                        ErrorCode.UNKNOWN_TYPE,
                        f"unknown type {frame.type!r}; known types: {', '.join(self._handlers)}",
                        request=frame.type,
                    )
                await handler(outgoing, connected, frame)
            except FrameError as refusal:
                reply_error(outgoing, _about(refusal, frame))
            except _CONNECTION_LEVEL:
                raise
            except Exception:
                # A bug must cost the client one request, not the connection.
                log.exception("frame handling failed user_id=%s", user.id)
                reply_error(
                    outgoing,
                    _about(
                        FrameError(ErrorCode.INTERNAL, "the server failed to handle this frame"),
                        frame,
                    ),
                )

    async def _echo(self, outgoing: Outgoing, connected: ConnectedUser, frame: ClientFrame) -> None:
        outgoing.put(Frame(wire.encode(frame.raw).decode(), "echo.message"))

    async def _location(
        self, outgoing: Outgoing, connected: ConnectedUser, frame: ClientFrame
    ) -> None:
        location = new_location(connected.user.group, frame.data)
        if not self._locations.report(connected, location):
            metrics.LOCATIONS_THINNED.inc()

    async def _command(
        self, outgoing: Outgoing, connected: ConnectedUser, frame: ClientFrame
    ) -> None:
        if tracing.enabled:
            # The root of the command's trace (`shared.tracing`).
            with tracing.span(
                f"receive {frame.type}",
                SpanKind.SERVER,
                attributes={"taxi.user_id": connected.user.id, "taxi.command": frame.type},
            ):
                await self._publish_command(outgoing, connected, frame)
            return
        await self._publish_command(outgoing, connected, frame)

    async def _publish_command(
        self, outgoing: Outgoing, connected: ConnectedUser, frame: ClientFrame
    ) -> None:
        user = connected.user
        command = new_command(
            frame.type,
            user.id,
            user.group,
            frame.data,
            frame.request_id,
            # The dispatcher refuses it if this socket's session has ended meanwhile.
            issued_at=outgoing.issued_at,
            session=outgoing.session,
        )
        started = time.perf_counter()
        try:
            await self._broker.publish_command(command.type, command.encode(), str(command.id))
        except PublishFailed as exc:
            log.warning(
                "command not published message_id=%s user_id=%s error=%s", command.id, user.id, exc
            )
            raise FrameError(
                ErrorCode.UNAVAILABLE,
                "the request could not be confirmed as passed on; send it again with the "
                "same request_id (it then takes effect at most once), or check your trips",
                frame.type,
            ) from None
        metrics.PUBLISH_SECONDS.observe(time.perf_counter() - started)
        log.debug(
            "command published message_id=%s user_id=%s type=%s", command.id, user.id, command.type
        )


def reply_error(outgoing: Outgoing, refusal: FrameError) -> None:
    metrics.ERRORS.labels(refusal.code).inc()
    outgoing.put(Frame(refusal.frame().decode(), "error"))


def _about(refusal: FrameError, frame: ClientFrame | None) -> FrameError:
    """The refusal, naming the request id and trip of the frame it refuses."""
    if frame is not None:
        refusal.request = refusal.request or frame.type
        refusal.request_id = refusal.request_id or frame.request_id
        refusal.trip_id = refusal.trip_id or frame.trip_id
    return refusal


def _client(websocket: WebSocket) -> str:
    client = websocket.client
    return f"{client.host}:{client.port}" if client else "unknown"


def _forget_handshake(websocket: WebSocket) -> None:
    """Let go of what only the handshake needed (its headers, the query with the
    token): a socket may live for hours, and a gateway holds tens of thousands."""
    websocket.scope["headers"] = []
    websocket.scope["query_string"] = b""
    vars(websocket).pop("_query_params", None)


def _since(websocket: WebSocket) -> int | None:
    """The `since` of a resuming client: the last notification number it has."""
    raw = websocket.query_params.get("since")
    if raw is None:
        return None
    if not (raw.isascii() and raw.isdigit()) or int(raw) > MAX_SEQ:
        raise FrameError(
            ErrorCode.INVALID_DATA,
            "since must be the number of the last notification you have: a whole number, 0 or more",
        )
    return int(raw)


def _resume_after(since: int | None, point: ResumePoint) -> tuple[int, int | None]:
    """Where the socket's notifications start (it is sent those numbered after it), and
    the oldest kept notification if the client must reload its trips instead (resync)."""
    if since is None:
        # The course's client: what the user missed since their last socket closed,
        # or as much of it as is still kept.
        return max(point.delivered_seq, point.oldest_seq - 1), None
    if point.oldest_seq > since + 1:
        return point.last_seq, point.oldest_seq
    return since, None


async def _refuse(websocket: WebSocket, status: int, detail: str, code: str) -> None:
    await websocket.send_denial_response(
        OrjsonResponse({"detail": detail, "code": code}, status_code=status)
    )
