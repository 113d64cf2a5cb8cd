"""Each socket's way out: a bounded buffer and one writer, so no socket waits on another.

Frames meant for a socket are put in its buffer without waiting; the socket's own
writer sends them in order. A user's notifications are numbered and reach the
socket through its user (`ConnectedUser.pass_on`), and the writer sends each
exactly once and in order: it skips one it has sent already, and before a number
it has not reached it sends what it lacks from the user's history (what the user
passed on before the socket opened, or what a full buffer dropped). So a socket
never loses a notification and never shows one twice.

A socket whose data has not drained for TAXI_SLOW_CLIENT_SECONDS is too slow: one
send has not finished in that time (the client stopped reading, so the server
stopped writing to it), or its buffer stayed full that long. Its writer stops
(`too_slow`), the socket is closed with 4010, and its client resumes with `since`
when it reconnects. The gateway checks every socket now and then (`check_drained`),
so a client that stops reading is closed whether or not anything new is sent to it.

A gateway holds tens of thousands of these, so each is lean: a plain list for the
buffer and one future to wake the writer, not an asyncio.Queue (whose deques and
event cost about 3 KB a socket even when empty).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Final, Protocol

from opentelemetry.context import Context
from opentelemetry.trace import SpanKind

from gateway.live import metrics
from gateway.live.notification_log import READ_BATCH, Logged
from shared import tracing

# Frames waiting for one socket at most; a client that falls this far behind is slow.
BUFFER_FRAMES = 256


@dataclass(frozen=True, slots=True)
class Frame:
    text: str
    type: str
    # Its number in the user's sequence; None for what is not kept (offers, replies).
    seq: int | None = None
    # The trace of the command that caused it, when traces are on (`shared.tracing`).
    trace: Context | None = None


# Put in a buffer to wake its writer, which then sends anything of the user's
# history it has not sent (a marker, never sent itself).
CATCH_UP: Final = Frame("", "catch-up")

SendText = Callable[[str], Awaitable[None]]
# What a socket speaking another dialect is sent for one of our frames (its type, its
# text, whether it is numbered), or None for nothing (`gateway.live.course_frames`).
Dialect = Callable[[str, str, bool], str | None]
Close = Callable[[int, str], Awaitable[None]]


class History(Protocol):
    """The notifications a socket's user passed on after `after` (up to `upto`), at most
    READ_BATCH of them (`ConnectedUser.history`)."""

    async def __call__(self, after: int, upto: int | None = None) -> list[Logged]: ...


class Outgoing:
    __slots__ = (
        "_clock",
        "_close",
        "_closing",
        "_dialect",
        "_dropped",
        "_frames",
        "_full_since",
        "_history",
        "_send_started",
        "_send_text",
        "_slow_seconds",
        "_wakeup",
        "_writer",
        "id",
        "issued_at",
        "opened_at",
        "sent_up_to",
        "session",
        "too_slow",
        "user_id",
    )

    def __init__(
        self,
        user_id: int,
        send_text: SendText,
        history: History,
        *,
        sent_up_to: int,
        slow_seconds: float,
        close: Close | None = None,
        dialect: Dialect | None = None,
        issued_at: float = 0.0,
        session: uuid.UUID | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.user_id = user_id
        # Names the socket among all of its user's, on every gateway (`gateway.live.open_sockets`).
        self.id = uuid.uuid4().hex
        # When the token the socket was opened with was issued (a revocation of the
        # user's sessions after that closes it), and when the socket opened.
        self.issued_at = issued_at
        # The session family of that token (its `sid`; None for an older token): when
        # the family ends, the socket is closed (`gateway.live.revocations`).
        self.session = session
        self.opened_at = clock()
        # The number of the last notification this socket was sent.
        self.sent_up_to = sent_up_to
        # Set when the buffer stayed full too long; the writer has stopped then.
        self.too_slow = False
        self._send_text = send_text
        self._history = history
        # Frames waiting, oldest first, and what the writer waits on when there are none.
        self._frames: list[Frame] = []
        self._wakeup: asyncio.Future[None] | None = None
        self._writer: asyncio.Task[None] | None = None
        self._slow_seconds = slow_seconds
        self._clock = clock
        self._full_since: float | None = None
        # When the send under way started (None: the writer is not sending).
        self._send_started: float | None = None
        # A numbered frame was dropped: read the log once the buffer has drained, even
        # if no later notification comes to reveal the gap.
        self._dropped = False
        # Set by `close_after_sending`: the close frame to send once the buffer is empty.
        self._closing: tuple[int, str] | None = None
        self._close = close
        self._dialect = dialect

    def put(self, frame: Frame) -> None:
        """Queue a frame for the socket, never waiting. When the buffer is full the frame
        is dropped: a numbered one comes back from the log once the writer catches up."""
        if len(self._frames) < BUFFER_FRAMES:
            self._frames.append(frame)
            self._full_since = None
            if self._wakeup is not None and not self._wakeup.done():
                self._wakeup.set_result(None)
            return
        self._dropped = self._dropped or frame.seq is not None
        now = self._clock()
        if self._full_since is None:
            self._full_since = now
        elif now - self._full_since >= self._slow_seconds:
            self._stop_too_slow()

    def check_drained(self) -> None:
        """Close the socket as too slow if its writer has been stuck in one send for
        TAXI_SLOW_CLIENT_SECONDS: the client is not reading."""
        started = self._send_started
        if started is not None and self._clock() - started >= self._slow_seconds:
            self._stop_too_slow()

    def _stop_too_slow(self) -> None:
        if self.too_slow:
            return
        self.too_slow = True
        # The writer is stuck in a send to a client that does not read: stop it.
        if self._writer is not None:
            self._writer.cancel()

    def close_after_sending(self, code: int, reason: str) -> None:
        """Close the socket once everything already in its buffer was sent (so a client
        cut off for flooding still reads the refusals that came first)."""
        if self._closing is not None:
            return  # already on its way out, for an earlier reason
        self._closing = (code, reason)
        self.put(CATCH_UP)  # wakes the writer if it waits on an empty buffer

    @property
    def waiting(self) -> int:
        """Frames in the buffer, not yet taken by the writer."""
        return len(self._frames)

    @property
    def closing(self) -> bool:
        return self._closing is not None

    async def run(self) -> None:
        """Send what the socket missed, then everything put in its buffer, until the
        socket closes (the send raises), it is asked to close, the client turns out too
        slow (`too_slow`), or the task is cancelled."""
        self._writer = asyncio.current_task()
        try:
            await self._write()
        except asyncio.CancelledError:
            if not self.too_slow:
                raise
        finally:
            self._writer = None

    async def _write(self) -> None:
        await self._catch_up()
        while True:
            if self._closing is not None and self._close is not None and not self._frames:
                await self._close(*self._closing)
                return
            if self._dropped and not self._frames:
                self._dropped = False
                await self._catch_up()
            frame = await self._next()
            if frame is CATCH_UP:
                await self._catch_up()
            elif frame.seq is None:
                await self._send(frame.text, frame.type, numbered=False, trace=frame.trace)
            elif frame.seq > self.sent_up_to:
                if frame.seq > self.sent_up_to + 1:
                    await self._catch_up(frame.seq - 1)
                await self._send(frame.text, frame.type, numbered=True, trace=frame.trace)
                self.sent_up_to = frame.seq

    async def _next(self) -> Frame:
        while not self._frames:
            self._wakeup = asyncio.get_running_loop().create_future()
            try:
                await self._wakeup
            finally:
                self._wakeup = None
        # A list, not a deque: a pop from the front moves at most BUFFER_FRAMES pointers.
        return self._frames.pop(0)

    async def _catch_up(self, upto: int | None = None) -> None:
        """Send from the user's history everything numbered after what this socket was sent."""
        while True:
            missed = await self._history(self.sent_up_to, upto)
            for logged in missed:
                await self._send(logged.body.decode(), logged.frame_type, numbered=True)
                self.sent_up_to = logged.seq
            if len(missed) < READ_BATCH:
                return

    async def _send(
        self, text: str, frame_type: str, *, numbered: bool, trace: Context | None = None
    ) -> None:
        if self._dialect is not None:
            translated = self._dialect(frame_type, text, numbered)
            if translated is None:
                return  # nothing this socket's client can read
            text = translated
        self._send_started = self._clock()
        try:
            if trace is None:
                await self._send_text(text)
            else:
                await self._send_traced(text, frame_type, trace)
        finally:
            self._send_started = None
        metrics.FRAMES_OUT.labels(frame_type).inc()

    async def _send_traced(self, text: str, frame_type: str, trace: Context) -> None:
        """The write as the last span of the command's trace."""
        attributes: dict[str, str | int] = {"taxi.user_id": self.user_id, "taxi.socket": self.id}
        with tracing.span(f"{frame_type} write", SpanKind.PRODUCER, trace, attributes):
            await self._send_text(text)
