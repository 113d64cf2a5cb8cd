"""The users connected to this gateway, each with all of their sockets.

A user's notifications reach this gateway once, however many sockets the user has
here: the gateway's queue is bound to `user.<id>` while at least one of them is
open. What belongs to the user, not to a socket, lives here: the last notification
passed on, whose trip is under way (a busy driver gets no offers; a driver's
location goes to the rider of that trip), and the sockets.

Every numbered notification a socket is sent passes `ConnectedUser.pass_on`, the one
place that updates that state, whatever brought it: the broker (live), or the log,
read back after a gap, after the broker connection came back, or when a socket
opens while one is in flight. A socket is never sent a number the user has not
passed here, so what the gateway believes and what the sockets show cannot differ.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Protocol

import orjson

from gateway.live.notification_log import READ_BATCH, Logged, ResumePoint
from gateway.live.outgoing import Frame, Outgoing
from shared.db import DATABASE_OUTAGE
from shared.locations import Location
from shared.trips import EventType, TripUnderWay
from shared.users import User
from shared.wire import CloseCode

log = logging.getLogger(__name__)

# A user's own trip notifications say which trip of theirs is under way: from its
# accept until it is completed or cancelled.
_UNDER_WAY_AFTER = {
    EventType.ACCEPTED.value: True,
    EventType.PICKED_UP.value: True,
    EventType.COMPLETED.value: False,
    EventType.CANCELLED.value: False,
}

# Why a socket that made room for a newer one of its user was closed.
REPLACED_REASON = "replaced by a newer connection: at most TAXI_MAX_SOCKETS_PER_USER per user"

# How long a read of the log that failed waits before it is tried again.
RETRY_SECONDS = 1.0

Binding = Callable[[int], Awaitable[None]]
TripChanged = Callable[["ConnectedUser"], None]


class LogReader(Protocol):
    """Where the gateway reads back what it missed (`gateway.live.notification_log`)."""

    async def read(self, user_id: int, after: int, upto: int | None = None) -> list[Logged]: ...


def _no_one_to_tell(user: ConnectedUser) -> None:
    return None


@dataclass(eq=False, slots=True)
class ConnectedUser:
    user: User
    log: LogReader
    # Told when the user's trip under way changes (`DriverLocations.trip_changed`).
    trip_changed: TripChanged = _no_one_to_tell
    sockets: set[Outgoing] = field(default_factory=set)
    under_way: TripUnderWay | None = None
    # A driver's last location acted on (`gateway.live.locations`), when (seconds since the
    # epoch), and when the next report may be acted on (monotonic seconds).
    location: Location | None = None
    located_at: float = 0.0
    next_report_at: float = 0.0
    # The newest notification passed on to the sockets here; None until the user's
    # first socket here has read where the user stands (`start_from`).
    last_seq: int | None = None
    # The newest number that arrived before then (the log is read for it, if newer).
    unplaced_seq: int = 0
    # Sockets opening or open: the binding goes only when the last one has closed.
    members: int = 0
    bound: bool = False
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    # Reading the log for what did not arrive, and whether to read again when done.
    _reading: asyncio.Task[None] | None = None
    _read_again: bool = False

    @property
    def busy(self) -> bool:
        """A driver with a trip under way takes no offers."""
        return self.user.is_driver and self.under_way is not None

    def start_from(self, point: ResumePoint) -> None:
        """A socket of the user opened, and `point` is where the database says they
        stand. The first socket here takes it as the user's state (the database read it
        all in one statement); a later one changes nothing, but if the database knows
        of a newer notification than was passed on here, it is on its way or lost:
        read it back now, for every socket."""
        if self.last_seq is None:
            self.last_seq = point.last_seq
            self._set_under_way(point.under_way)
        if max(point.last_seq, self.unplaced_seq) > self.last_seq:
            self.catch_up()

    def pass_on(self, frame: Frame) -> None:
        """A notification of the user, from the broker or the log: every socket gets
        it once, in the user's order. One arriving after a gap is read back from the
        log with those before it (it is committed before it is published)."""
        assert frame.seq is not None
        if self.last_seq is None:
            self.unplaced_seq = max(self.unplaced_seq, frame.seq)
        elif frame.seq == self.last_seq + 1:
            self._apply(frame)
        elif frame.seq > self.last_seq:
            self.catch_up()

    def put_live(self, frame: Frame) -> None:
        """A frame that is worth something only now (no number, never kept)."""
        for socket in self.sockets:
            socket.put(frame)

    def replace(self, socket_ids: set[str]) -> None:
        """Close the user's sockets here that made room for newer ones (4011)."""
        for socket in self.sockets:
            if socket.id in socket_ids:
                socket.close_after_sending(CloseCode.REPLACED, REPLACED_REASON)

    def catch_up(self) -> None:
        """Read the log for every notification after the last passed on, and pass
        them on. One reader per user; asked again while it reads, it reads once more."""
        if self._reading is not None and not self._reading.done():
            self._read_again = True
            return
        self._reading = asyncio.create_task(self._read_back())

    def stop(self) -> None:
        """The user's last socket here closed."""
        if self._reading is not None:
            self._reading.cancel()

    async def history(self, after: int, upto: int | None = None) -> list[Logged]:
        """For one socket: notifications after `after` that were already passed on
        here (up to `upto`), at most READ_BATCH of them. A socket reads these when it
        opens or lost some from a full buffer; never one the user has not passed."""
        passed = self.last_seq or 0
        upto = passed if upto is None else min(upto, passed)
        if upto <= after:
            return []
        return await self.log.read(self.user.id, after, upto)

    def _apply(self, frame: Frame) -> None:
        assert frame.seq is not None
        self.last_seq = frame.seq
        under_way = _UNDER_WAY_AFTER.get(frame.type)
        if under_way is not None:
            self._set_under_way(_trip_of(frame) if under_way else None)
        for socket in self.sockets:
            socket.put(frame)

    def _set_under_way(self, trip: TripUnderWay | None) -> None:
        if trip != self.under_way:
            self.under_way = trip
            self.trip_changed(self)

    async def _read_back(self) -> None:
        while True:
            self._read_again = False
            try:
                await self._read_all()
            except DATABASE_OUTAGE as exc:
                log.warning("log read paused user_id=%s error=%r", self.user.id, exc)
                self._read_again = True
                await asyncio.sleep(RETRY_SECONDS)
            if not self._read_again:
                return

    async def _read_all(self) -> None:
        while True:
            after = self.last_seq or 0
            missed = await self.log.read(self.user.id, after)
            for logged in missed:
                # Live notifications may have moved on while the log was read.
                if logged.seq > (self.last_seq or 0):
                    self._apply(Frame(logged.body.decode(), logged.frame_type, logged.seq))
            if len(missed) < READ_BATCH:
                return


class ConnectedUsers:
    def __init__(self, bind: Binding, unbind: Binding, log: LogReader) -> None:
        self._bind = bind
        self._unbind = unbind
        self._log = log
        self.trip_changed: TripChanged = _no_one_to_tell
        self._users: dict[int, ConnectedUser] = {}
        # The drivers among them, for the offers fan-out to walk without the riders.
        self._drivers: dict[int, ConnectedUser] = {}

    async def join(self, user: User) -> ConnectedUser:
        """The user, with this gateway now receiving their notifications."""
        connected = self._users.get(user.id)
        if connected is None:
            connected = self._users[user.id] = ConnectedUser(user, self._log, self.trip_changed)
            if user.is_driver:
                self._drivers[user.id] = connected
        # Counted before any await, so that a last socket closing meanwhile keeps the binding.
        connected.members += 1
        try:
            async with connected.lock:
                if not connected.bound:
                    await self._bind(user.id)
                    connected.bound = True
        except BaseException:
            await self.leave(connected)
            raise
        return connected

    async def leave(self, connected: ConnectedUser) -> bool:
        """One socket of the user closed; True if it was their last one here."""
        connected.members -= 1
        async with connected.lock:
            if connected.members == 0 and connected.bound:
                await self._unbind(connected.user.id)
                connected.bound = False
            if connected.members == 0 and self._users.get(connected.user.id) is connected:
                del self._users[connected.user.id]
                self._drivers.pop(connected.user.id, None)
                connected.stop()
                return True
        return False

    def get(self, user_id: int) -> ConnectedUser | None:
        return self._users.get(user_id)

    # No copies: callers only put frames in buffers, which never waits, so the
    # dictionaries cannot change while they walk them.
    def __iter__(self) -> Iterator[ConnectedUser]:
        return iter(self._users.values())

    def drivers(self) -> Iterator[ConnectedUser]:
        return iter(self._drivers.values())

    async def check_drained_every(self, seconds: float) -> None:
        """Close the sockets whose clients stopped reading, whether or not anything new
        is sent to them (`Outgoing.check_drained`)."""
        while True:
            await asyncio.sleep(seconds)
            for connected in self:
                for socket in connected.sockets:
                    socket.check_drained()

    def catch_up_all(self) -> None:
        """After the broker connection came back: notifications published meanwhile never
        reached this gateway, so every user here reads what they missed from the log."""
        for connected in self:
            if connected.last_seq is not None:
                connected.catch_up()


def _trip_of(frame: Frame) -> TripUnderWay:
    """The trip of an accept or pick-up notification (read only for these few)."""
    trip = orjson.loads(frame.text)["data"]
    return TripUnderWay(trip["id"], trip["rider"]["id"], trip["driver"]["id"])
