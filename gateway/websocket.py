"""The `/taxi/` WebSocket: authenticate, then bridge the socket and the user's inbox.

Handshakes with a bad token are refused with HTTP 401 before the upgrade. Once
open, every frame from the client is validated; a bad one gets an `error` frame and
the connection stays open. Commands are stamped with the user and a message id and
published; everything that arrives on the user's queue is forwarded to the socket
and acknowledged only once it was written. Drivers also get offers, fanned out by
`gateway.offers` while they are free.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable

from aio_pika.exceptions import AMQPError
from starlette.websockets import WebSocket, WebSocketDisconnect

from gateway import metrics
from gateway.broker import GatewayBroker, Inbox, PublishFailed
from gateway.http_api import OrjsonResponse
from gateway.offers import ConnectedDriver, OfferFanout
from gateway.rate_limit import TokenBucket
from gateway.tokens import TokenError, TokenService
from gateway.users import UserRepository
from shared import wire
from shared.commands import COMMAND_TYPES, new_command
from shared.db import DATABASE_OUTAGE
from shared.topology import OFFERS_HEADER, PAUSE_OFFERS, RESUME_OFFERS
from shared.users import User
from shared.wire import ClientFrame, CloseCode, ErrorCode, FrameError

log = logging.getLogger(__name__)

FrameHandler = Callable[[WebSocket, User, ClientFrame], Awaitable[None]]


# Failures that end the connection rather than one frame.
_CONNECTION_LEVEL: tuple[type[BaseException], ...] = (WebSocketDisconnect, *DATABASE_OUTAGE)

# A client that keeps sending after this many refused frames in a row is cut off.
MAX_RATE_LIMITED_FRAMES = 10


class TaxiSocket:
    def __init__(
        self,
        tokens: TokenService,
        users: UserRepository,
        broker: GatewayBroker,
        offers: OfferFanout,
        rate_limit: tuple[int, int],
    ) -> None:
        self._tokens = tokens
        self._users = users
        self._broker = broker
        self._offers = offers
        self._rate_limit = rate_limit
        self._open: set[WebSocket] = set()
        self._handlers: dict[str, FrameHandler] = {"echo.message": self._echo}
        self._handlers.update(dict.fromkeys(COMMAND_TYPES, self._command))

    async def close_all(self) -> None:
        """Tell every connected client the server is going away (1001), before shutdown."""
        for websocket in list(self._open):
            # A socket that is already gone must not stop the others being told.
            with contextlib.suppress(Exception):
                await websocket.close(CloseCode.GOING_AWAY, "server shutting down")

    async def endpoint(self, websocket: WebSocket) -> None:
        try:
            connecting = await self._authenticate(websocket)
        except DATABASE_OUTAGE as exc:
            log.warning("handshake refused, database unavailable error=%r", exc)
            await websocket.send_denial_response(
                OrjsonResponse({"detail": "database unavailable, retry shortly"}, status_code=503)
            )
            return
        if connecting is None:
            return
        user, busy = connecting
        # The inbox is bound before the handshake completes, so that anything sent
        # to the user once their socket is open reaches them.
        async with self._broker.inbox(user, offers=not busy) as inbox:
            await websocket.accept()
            connections = metrics.OPEN_CONNECTIONS.labels(user.group)
            connections.inc()
            log.debug("socket opened user_id=%s group=%s", user.id, user.group)
            forwarder = asyncio.create_task(_forward(inbox, websocket))
            driver = ConnectedDriver(user.id, inbox, websocket.send_text)
            if user.is_driver:
                self._offers.register(driver)
            self._open.add(websocket)
            try:
                await self._receive(websocket, user)
            finally:
                self._open.discard(websocket)
                self._offers.unregister(driver)
                connections.dec()
                # The forwarder only waits on a local buffer and the socket, never on
                # a broker call, so cancelling it is safe; the inbox then closes its
                # consumer and unacknowledged messages go back to the user's queue.
                # (Closing a consumer while a forwarder still iterates it makes
                # aio-pika's robust iterator consume again.)
                forwarder.cancel()
                (outcome,) = await asyncio.gather(forwarder, return_exceptions=True)
                if isinstance(outcome, Exception):
                    log.warning("forwarding stopped user_id=%s error=%r", user.id, outcome)
        log.debug("socket closed user_id=%s", user.id)

    async def _authenticate(self, websocket: WebSocket) -> tuple[User, bool] | None:
        """The connecting user and whether they are busy, or None after refusing the
        handshake with 401."""
        token = websocket.query_params.get("token")
        reason = "a token is required: connect to /taxi/?token=<access token>"
        if token:
            try:
                claims = self._tokens.verify(token, "access")
            except TokenError as exc:
                reason = str(exc)
            else:
                connecting = await self._users.connecting(claims.user_id)
                if connecting is not None:
                    return connecting
                reason = "user not found or inactive"
        await websocket.send_denial_response(
            OrjsonResponse({"detail": reason, "code": "token_not_valid"}, status_code=401)
        )
        return None

    async def _receive(self, websocket: WebSocket, user: User) -> None:
        bucket = TokenBucket(*self._rate_limit)
        refused_in_a_row = 0
        while True:
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                return
            if not bucket.take():
                refused_in_a_row += 1
                if refused_in_a_row > MAX_RATE_LIMITED_FRAMES:
                    log.warning("socket cut off for flooding user_id=%s", user.id)
                    await websocket.close(CloseCode.RATE_LIMITED, "rate limit exceeded")
                    return
                await send_error(
                    websocket,
                    FrameError(
                        ErrorCode.RATE_LIMITED,
                        f"too many frames: at most {self._rate_limit[0]} per second; "
                        "this frame was dropped",
                    ),
                )
                continue
            refused_in_a_row = 0
            text = message.get("text")
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
                await handler(websocket, user, frame)
            except FrameError as refusal:
                await send_error(websocket, refusal)
            except _CONNECTION_LEVEL:
                raise
            except Exception:
                # A bug must cost the client one request, not the connection.
                log.exception("frame handling failed user_id=%s", user.id)
                await send_error(
                    websocket,
                    FrameError(ErrorCode.INTERNAL, "the server failed to handle this frame"),
                )

    async def _echo(self, websocket: WebSocket, user: User, frame: ClientFrame) -> None:
        await send_frame(websocket, wire.encode(frame.raw), "echo.message")

    async def _command(self, websocket: WebSocket, user: User, frame: ClientFrame) -> None:
        command = new_command(frame.type, user.id, user.group, frame.data)
        started = time.perf_counter()
        try:
            await self._broker.publish_command(command.type, command.encode(), str(command.id))
        except PublishFailed as exc:
            log.warning(
                "command not published message_id=%s user_id=%s error=%s", command.id, user.id, exc
            )
            raise FrameError(
                ErrorCode.UNAVAILABLE,
                "the request could not be confirmed as passed on; check your trips and try again",
                frame.type,
            ) from None
        metrics.PUBLISH_SECONDS.observe(time.perf_counter() - started)
        log.debug(
            "command published message_id=%s user_id=%s type=%s", command.id, user.id, command.type
        )


async def _forward(inbox: Inbox, websocket: WebSocket) -> None:
    """The user's own notifications: each acknowledged only once it was written."""
    async for message in inbox.messages:
        directive = (message.headers or {}).get(OFFERS_HEADER)
        if directive == PAUSE_OFFERS:
            inbox.offers_paused = True
        elif directive == RESUME_OFFERS:
            inbox.offers_paused = False
        try:
            await send_frame(websocket, message.body, message.type or "unknown")
        except (WebSocketDisconnect, RuntimeError, OSError):
            await _settle(message.nack(requeue=True))
            return
        await _settle(message.ack())


async def _settle(settlement: Awaitable[None]) -> None:
    """Ack or nack; after a broker reconnect the message belongs to a dead channel and
    the broker delivers it again, so a failure here is logged and forwarding goes on."""
    try:
        await settlement
    except (AMQPError, RuntimeError, ConnectionError) as exc:
        log.info("message not settled, the broker will deliver it again error=%r", exc)


async def send_frame(websocket: WebSocket, frame: bytes, frame_type: str) -> None:
    """Frames go out as text: the course's browser client parses text frames only."""
    await websocket.send_text(frame.decode())
    metrics.FRAMES_OUT.labels(frame_type).inc()


async def send_error(websocket: WebSocket, refusal: FrameError) -> None:
    metrics.ERRORS.labels(refusal.code).inc()
    await send_frame(
        websocket, wire.error_frame(refusal.code, refusal.message, refusal.request), "error"
    )
