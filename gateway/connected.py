"""The users connected to this gateway, each with all of their sockets.

A user's notifications reach this gateway once, however many sockets the user has
here: the gateway's queue is bound to `user.<id>` while at least one of them is
open. Each notification is then put in every one of the user's sockets, in the
user's order. What belongs to the user, not to a socket, lives here: whether a
driver is busy (no offers meanwhile) and the last notification seen.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field

import orjson

from gateway.notification_log import ResumePoint
from gateway.outgoing import CATCH_UP, Frame, Outgoing
from shared.locations import Location
from shared.trips import EventType, TripUnderWay
from shared.users import User

# A user's own trip notifications say which trip of theirs is under way: from its
# accept until it is completed or cancelled.
_UNDER_WAY_AFTER = {
    EventType.ACCEPTED.value: True,
    EventType.PICKED_UP.value: True,
    EventType.COMPLETED.value: False,
    EventType.CANCELLED.value: False,
}

Binding = Callable[[int], Awaitable[None]]


@dataclass(eq=False, slots=True)
class ConnectedUser:
    user: User
    sockets: set[Outgoing] = field(default_factory=set)
    under_way: TripUnderWay | None = None
    # A driver's last location acted on (`gateway.locations`), when (seconds since the
    # epoch), and when the next report may be acted on (monotonic seconds).
    location: Location | None = None
    located_at: float = 0.0
    next_report_at: float = 0.0
    # The newest notification of the user this gateway has passed on.
    last_seq: int = 0
    # Sockets opening or open: the binding goes only when the last one has closed.
    members: int = 0
    bound: bool = False
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    @property
    def busy(self) -> bool:
        """A driver with a trip under way takes no offers."""
        return self.user.is_driver and self.under_way is not None

    def resume_from(self, point: ResumePoint) -> None:
        """Take the database's view, unless a newer notification already arrived live."""
        if point.last_seq >= self.last_seq:
            self.last_seq = point.last_seq
            self.under_way = point.under_way

    def notify(self, frame: Frame) -> None:
        """A notification of the user: every socket gets it, once, in the user's order
        (an older one arriving late is dropped: each socket fills gaps from the log)."""
        assert frame.seq is not None
        if frame.seq <= self.last_seq:
            return
        self.last_seq = frame.seq
        under_way = _UNDER_WAY_AFTER.get(frame.type)
        if under_way is not None:
            self.under_way = _trip_of(frame) if under_way else None
        for socket in self.sockets:
            socket.put(frame)

    def put_live(self, frame: Frame) -> None:
        """A frame that is worth something only now (no number, never kept)."""
        for socket in self.sockets:
            socket.put(frame)


class ConnectedUsers:
    def __init__(self, bind: Binding, unbind: Binding) -> None:
        self._bind = bind
        self._unbind = unbind
        self._users: dict[int, ConnectedUser] = {}
        # The drivers among them, for the offers fan-out to walk without the riders, and
        # those of them who have not reported a location (offered every trip by broadcast).
        self._drivers: dict[int, ConnectedUser] = {}
        self._unlocated: dict[int, ConnectedUser] = {}

    async def join(self, user: User) -> ConnectedUser:
        """The user, with this gateway now receiving their notifications."""
        connected = self._users.get(user.id)
        if connected is None:
            connected = self._users[user.id] = ConnectedUser(user)
            if user.is_driver:
                self._drivers[user.id] = self._unlocated[user.id] = connected
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
                self._unlocated.pop(connected.user.id, None)
                return True
        return False

    def located(self, driver: ConnectedUser) -> None:
        """The driver reported a location: dispatch offers them trips by distance now."""
        self._unlocated.pop(driver.user.id, None)

    def get(self, user_id: int) -> ConnectedUser | None:
        return self._users.get(user_id)

    # No copies: callers only put frames in buffers, which never waits, so the
    # dictionaries cannot change while they walk them.
    def __iter__(self) -> Iterator[ConnectedUser]:
        return iter(self._users.values())

    def drivers(self) -> Iterator[ConnectedUser]:
        return iter(self._drivers.values())

    def unlocated_drivers(self) -> Iterator[ConnectedUser]:
        return iter(self._unlocated.values())

    def catch_up_all(self) -> None:
        """After the broker connection came back: notifications published meanwhile never
        reached this gateway, so every socket reads what it missed from the log."""
        for connected in self:
            for socket in connected.sockets:
                socket.put(CATCH_UP)


def _trip_of(frame: Frame) -> TripUnderWay:
    """The trip of an accept or pick-up notification (read only for these few)."""
    trip = orjson.loads(frame.text)["data"]
    return TripUnderWay(trip["id"], trip["rider"]["id"], trip["driver"]["id"])
