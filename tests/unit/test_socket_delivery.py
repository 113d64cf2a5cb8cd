"""How the gateway gets frames to sockets, with in-memory sockets and log: every socket
of a user gets every notification once and in order, gaps are read back from the log
through the user (so what the gateway believes follows every frame a socket shows),
offers reach free drivers only, and a slow socket holds up no one."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson

from gateway.live.connected import ConnectedUser, ConnectedUsers
from gateway.live.inbox import Inbox
from gateway.live.notification_log import READ_BATCH, Logged, ResumePoint
from gateway.live.offers import OfferFanout
from gateway.live.outgoing import BUFFER_FRAMES, CATCH_UP, Frame, Outgoing
from shared.topology import (
    CC_HEADER,
    DISTANCES_HEADER,
    EXCLUDE_USER_HEADER,
    SEQS_HEADER,
    TRIP_HEADER,
    VERSION_HEADER,
)
from shared.trips import TripUnderWay
from shared.users import User
from shared.wire import with_seq

RIDER = User(7, "ann@example.com", "Ann", "Rider", "rider", None)
DRIVER = User(42, "dan@example.com", "Dan", "Driver", "driver", None)


class Log:
    """The notification log, in memory."""

    def __init__(self) -> None:
        self.kept: dict[int, list[Logged]] = {}

    def add(self, user_id: int, seq: int, frame_type: str = "trip.updated") -> Frame:
        trip = '{"id":"trip-1","rider":{"id":7},"driver":{"id":42}}'
        text = f'{{"seq":{seq},"type":"{frame_type}","data":{trip}}}'
        self.kept.setdefault(user_id, []).append(Logged(seq, frame_type, text.encode()))
        return Frame(text, frame_type, seq)

    async def read(self, user_id: int, after: int, upto: int | None = None) -> list[Logged]:
        wanted = [
            n
            for n in self.kept.get(user_id, [])
            if n.seq > after and (upto is None or n.seq <= upto)
        ]
        return wanted[:READ_BATCH]


@dataclass
class Socket:
    sent: list[str] = field(default_factory=list)
    stalled: asyncio.Event | None = None  # set: the client reads again

    async def send_text(self, text: str) -> None:
        if self.stalled is not None:
            await self.stalled.wait()
        self.sent.append(text)

    def seqs(self) -> list[int]:
        return [int(text.split(",")[0].removeprefix('{"seq":')) for text in self.sent]


def outgoing(owner: ConnectedUser, socket: Socket, **kwargs: Any) -> Outgoing:
    kwargs.setdefault("sent_up_to", 0)
    kwargs.setdefault("slow_seconds", 10)
    return Outgoing(owner.user.id, socket.send_text, owner.history, **kwargs)


def started(user: User, log: Log, last_seq: int = 0) -> ConnectedUser:
    """The user as a gateway holds them once their first socket read where they stand."""
    return ConnectedUser(user, log, last_seq=last_seq)


async def settle(condition: Callable[[], bool]) -> None:
    """Let the writers run until `condition` holds (they only wait on in-memory things)."""
    for _ in range(1000):
        await asyncio.sleep(0)
        if condition():
            return
    raise AssertionError("the writers never got there")


def writer_waits_on(writer: Outgoing) -> bool:
    """Its buffer is empty: the writer took the last frame and is sending it."""
    return writer.waiting == 0


async def running(*writers: Outgoing) -> list[asyncio.Task[None]]:
    return [asyncio.create_task(writer.run()) for writer in writers]


async def listening(
    *users: ConnectedUser,
) -> tuple[dict[int, Socket], list[Outgoing], list[asyncio.Task[None]]]:
    """One socket each for the users, its writer running: the sockets by user id,
    the writers and their tasks."""
    sockets = {connected.user.id: Socket() for connected in users}
    writers = []
    for connected in users:
        writer = outgoing(connected, sockets[connected.user.id])
        connected.sockets.add(writer)
        writers.append(writer)
    return sockets, writers, await running(*writers)


async def stop(tasks: list[asyncio.Task[None]]) -> None:
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


async def test_every_socket_of_a_user_gets_every_notification_once_in_order() -> None:
    log, phone, laptop = Log(), Socket(), Socket()
    user = started(RIDER, log)
    writers = [outgoing(user, phone), outgoing(user, laptop)]
    user.sockets.update(writers)
    tasks = await running(*writers)
    frames = [log.add(RIDER.id, seq) for seq in range(1, 6)]

    for frame in [frames[0], frames[1], frames[1], frames[2], frames[4], frames[3]]:
        user.pass_on(frame)
    await settle(lambda: len(phone.sent) == len(laptop.sent) == 5)

    # 5 came before 4: the user read 4 and 5 back from the log, and 4 itself is dropped.
    assert phone.seqs() == laptop.seqs() == [1, 2, 3, 4, 5]
    assert user.last_seq == 5
    await stop(tasks)


async def test_a_new_socket_first_gets_what_it_missed_from_the_log_then_live() -> None:
    log, socket = Log(), Socket()
    for seq in range(1, 4):
        log.add(RIDER.id, seq)
    user = started(RIDER, log, last_seq=3)
    writer = outgoing(user, socket, sent_up_to=1)
    user.sockets.add(writer)
    tasks = await running(writer)

    user.pass_on(log.add(RIDER.id, 4))
    await settle(lambda: len(socket.sent) == 3)

    assert socket.seqs() == [2, 3, 4]
    await stop(tasks)


async def test_a_socket_is_never_sent_a_number_its_user_has_not_passed_on() -> None:
    log, socket = Log(), Socket()
    for seq in range(1, 4):
        log.add(RIDER.id, seq)  # 3 is committed, still on its way here
    user = started(RIDER, log, last_seq=2)
    writer = outgoing(user, socket)
    user.sockets.add(writer)
    tasks = await running(writer)

    await settle(lambda: len(socket.sent) == 2)
    user.put_live(Frame("end", "echo.message"))
    await settle(lambda: socket.sent[-1] == "end")

    assert len(socket.sent) == 3  # 1, 2 and "end": not 3, which the user has not seen
    assert Socket(socket.sent[:2]).seqs() == [1, 2]
    await stop(tasks)


async def test_catching_up_reads_every_batch_of_a_long_absence() -> None:
    log, socket = Log(), Socket()
    for seq in range(1, 2 * READ_BATCH + 3):
        log.add(RIDER.id, seq)
    user = started(RIDER, log, last_seq=2 * READ_BATCH + 2)
    user.sockets.add(writer := outgoing(user, socket))
    tasks = await running(writer)

    await settle(lambda: len(socket.sent) == 2 * READ_BATCH + 2)

    assert socket.seqs() == list(range(1, 2 * READ_BATCH + 3))
    await stop(tasks)


async def test_after_a_broker_outage_each_socket_reads_what_never_arrived() -> None:
    log, socket = Log(), Socket()
    users = ConnectedUsers(bind=_nothing, unbind=_nothing, log=log)
    user = await users.join(RIDER)
    user.start_from(ResumePoint(0, 0, 1, under_way=None))
    writer = outgoing(user, socket)
    user.sockets.add(writer)
    tasks = await running(writer)
    log.add(RIDER.id, 1)  # committed, published while the connection was down: lost

    users.catch_up_all()
    await settle(lambda: socket.seqs() == [1])
    await stop(tasks)


async def test_what_is_read_back_after_a_broker_outage_moves_the_users_trip_on() -> None:
    """A driver finished their trip through another gateway while this one's broker
    link was down: once it is back, this gateway knows they are free (offers again,
    and their position no longer goes to the former rider)."""
    log = Log()
    changed: list[TripUnderWay | None] = []
    users = ConnectedUsers(bind=_nothing, unbind=_nothing, log=log)
    users.trip_changed = lambda user: changed.append(user.under_way)
    driver = await users.join(DRIVER)
    driver.start_from(ResumePoint(0, 0, 1, under_way=None))
    sockets, _, tasks = await listening(driver)
    driver.pass_on(log.add(DRIVER.id, 1, "trip.accepted"))
    assert driver.busy
    log.add(DRIVER.id, 2, "trip.picked_up")  # published while the link was down
    log.add(DRIVER.id, 3, "trip.completed")

    users.catch_up_all()
    await settle(lambda: len(sockets[DRIVER.id].sent) == 3)

    assert not driver.busy and driver.under_way is None
    assert changed == [TripUnderWay("trip-1", RIDER.id, DRIVER.id), None]
    await stop(tasks)


async def test_a_second_socket_opening_while_a_notification_is_on_its_way_hides_it_from_none() -> (
    None
):
    log, phone, laptop = Log(), Socket(), Socket()
    users = ConnectedUsers(bind=_nothing, unbind=_nothing, log=log)
    rider = await users.join(RIDER)
    rider.start_from(ResumePoint(0, 0, 1, under_way=None))
    rider.sockets.add(on_phone := outgoing(rider, phone))
    tasks = await running(on_phone)
    rider.pass_on(log.add(RIDER.id, 1))
    accepted = log.add(RIDER.id, 2, "trip.accepted")  # committed; on its way here

    again = await users.join(RIDER)  # the laptop opens, and reads where the rider stands
    again.start_from(ResumePoint(2, 0, 1, TripUnderWay("trip-1", RIDER.id, DRIVER.id)))
    rider.sockets.add(on_laptop := outgoing(rider, laptop))
    tasks += await running(on_laptop)
    await settle(lambda: phone.seqs() == laptop.seqs() == [1, 2])
    rider.pass_on(accepted)  # arrives live at last
    rider.put_live(Frame("end", "echo.message"))
    await settle(lambda: phone.sent[-1] == laptop.sent[-1] == "end")

    assert Socket(phone.sent[:-1]).seqs() == Socket(laptop.sent[:-1]).seqs() == [1, 2]
    assert rider.under_way == TripUnderWay("trip-1", RIDER.id, DRIVER.id)
    await stop(tasks)


async def test_what_arrives_before_the_first_socket_knows_where_the_user_stands_is_read_back() -> (
    None
):
    log, socket = Log(), Socket()
    users = ConnectedUsers(bind=_nothing, unbind=_nothing, log=log)
    rider = await users.join(RIDER)
    rider.pass_on(log.add(RIDER.id, 1))  # live, before the resume point was read
    rider.start_from(ResumePoint(0, 0, 1, under_way=None))  # read before 1 was committed
    rider.sockets.add(writer := outgoing(rider, socket))
    tasks = await running(writer)

    await settle(lambda: socket.seqs() == [1])
    assert rider.last_seq == 1
    await stop(tasks)


async def test_a_driver_is_busy_from_accepting_until_the_trip_ends() -> None:
    log = Log()
    driver = started(DRIVER, log)
    under_way = TripUnderWay("trip-1", RIDER.id, DRIVER.id)

    driver.pass_on(log.add(DRIVER.id, 1, "trip.accepted"))
    assert driver.busy
    assert driver.under_way == under_way
    driver.pass_on(log.add(DRIVER.id, 2, "trip.picked_up"))
    assert driver.busy
    driver.pass_on(log.add(DRIVER.id, 3, "trip.completed"))
    assert not driver.busy
    assert driver.under_way is None
    # A late "accepted" (older than what was applied) does not make them busy again.
    driver.pass_on(Frame("{}", "trip.accepted", 1))
    assert not driver.busy


async def test_a_rider_has_their_trip_under_way_but_is_never_busy() -> None:
    log = Log()
    rider = started(RIDER, log)

    rider.pass_on(log.add(RIDER.id, 1, "trip.accepted"))
    assert rider.under_way == TripUnderWay("trip-1", RIDER.id, DRIVER.id)
    assert not rider.busy
    rider.pass_on(log.add(RIDER.id, 2, "trip.cancelled"))
    assert rider.under_way is None


@dataclass
class Offer:
    body: bytes
    type: str = "trip.requested"
    headers: dict[str, Any] = field(default_factory=dict)
    routing_key: str = "drivers.offers"


async def test_offers_reach_every_socket_of_free_drivers_only() -> None:
    log = Log()
    users = ConnectedUsers(bind=_nothing, unbind=_nothing, log=log)
    sockets: dict[str, Socket] = {}
    writers = []
    for name, user in (
        ("free-1", User(1, "a", "", "", "driver", None)),
        ("free-2", User(1, "a", "", "", "driver", None)),
        ("busy", User(2, "b", "", "", "driver", None)),
        ("winner", User(3, "c", "", "", "driver", None)),
        ("rider", RIDER),
    ):
        connected = await users.join(user)
        if name == "busy":
            connected.under_way = TripUnderWay("trip-0", RIDER.id, user.id)
        sockets[name] = Socket()
        writer = outgoing(connected, sockets[name])
        connected.sockets.add(writer)
        writers.append(writer)
    tasks = await running(*writers)

    OfferFanout(users).broadcast(
        Offer(b'{"type":"trip.taken"}', headers={EXCLUDE_USER_HEADER: "3"})
    )  # type: ignore[arg-type]
    await settle(lambda: len(sockets["free-1"].sent) == len(sockets["free-2"].sent) == 1)

    assert sockets["free-1"].sent == ['{"type":"trip.taken"}']
    assert sockets["busy"].sent == sockets["winner"].sent == sockets["rider"].sent == []
    await stop(tasks)


async def test_a_stalled_socket_holds_up_no_other_and_is_called_too_slow() -> None:
    log = Log()
    now = [0.0]
    stalled, healthy = Socket(stalled=asyncio.Event()), Socket()
    user = started(RIDER, log)
    slow = outgoing(user, stalled, slow_seconds=10, clock=lambda: now[0])
    fine = outgoing(user, healthy)
    user.sockets.update((slow, fine))
    tasks = await running(slow, fine)

    for seq in range(1, BUFFER_FRAMES + 10):
        user.pass_on(log.add(RIDER.id, seq))
    await settle(lambda: len(healthy.sent) == BUFFER_FRAMES + 9)
    assert not slow.too_slow  # full, but not yet for long
    now[0] = 10.0
    user.pass_on(log.add(RIDER.id, BUFFER_FRAMES + 10))

    assert slow.too_slow
    assert healthy.seqs() == list(range(1, BUFFER_FRAMES + 10))
    await stop(tasks)


async def test_a_client_that_stops_reading_is_too_slow_with_nothing_more_sent_to_it() -> None:
    log = Log()
    now = [0.0]
    stalled = Socket(stalled=asyncio.Event())
    user = started(RIDER, log)
    slow = outgoing(user, stalled, slow_seconds=10, clock=lambda: now[0])
    user.sockets.add(slow)
    tasks = await running(slow)
    await settle(lambda: True)  # the writer has caught up with the (empty) log
    user.pass_on(log.add(RIDER.id, 1))  # one frame, and the client reads no more
    await settle(lambda: writer_waits_on(slow))

    slow.check_drained()
    assert not slow.too_slow  # its send has not been stuck for long yet
    now[0] = 10.0
    slow.check_drained()

    assert slow.too_slow
    await settle(lambda: tasks[0].done())
    await stop(tasks)


async def test_frames_dropped_from_a_full_buffer_come_back_from_the_log() -> None:
    log = Log()
    reading = asyncio.Event()
    socket = Socket(stalled=reading)
    user = started(RIDER, log)
    writer = outgoing(user, socket)
    user.sockets.add(writer)
    tasks = await running(writer)

    total = BUFFER_FRAMES + 50
    for seq in range(1, total + 1):
        user.pass_on(log.add(RIDER.id, seq))
    user.pass_on(log.add(RIDER.id, total + 1))
    reading.set()
    await settle(lambda: len(socket.sent) == total + 1)

    assert socket.seqs() == list(range(1, total + 2))
    await stop(tasks)


async def test_the_binding_stays_while_any_socket_of_the_user_is_open() -> None:
    calls: list[tuple[str, int]] = []

    async def bind(user_id: int) -> None:
        calls.append(("bind", user_id))

    async def unbind(user_id: int) -> None:
        calls.append(("unbind", user_id))

    users = ConnectedUsers(bind, unbind, Log())
    first = await users.join(RIDER)
    second = await users.join(RIDER)
    assert first is second
    await users.leave(first)
    assert calls == [("bind", 7)]
    await users.leave(second)
    assert calls == [("bind", 7), ("unbind", 7)]
    assert users.get(RIDER.id) is None
    await users.join(RIDER)
    assert calls[-1] == ("bind", 7)


async def test_catch_up_is_a_marker_not_a_frame() -> None:
    log, socket = Log(), Socket()
    writer = outgoing(started(RIDER, log), socket)
    tasks = await running(writer)
    writer.put(CATCH_UP)
    writer.put(Frame("hello", "echo.message"))
    await settle(lambda: socket.sent == ["hello"])
    await stop(tasks)


async def _nothing(user_id: int) -> None:
    return None


async def test_an_offer_older_than_what_drivers_here_were_sent_is_dropped() -> None:
    log, socket = Log(), Socket()
    users = ConnectedUsers(bind=_nothing, unbind=_nothing, log=log)
    driver = await users.join(DRIVER)
    writer = outgoing(driver, socket)
    driver.sockets.add(writer)
    tasks = await running(writer)
    fanout = OfferFanout(users)

    def offer(kind: str, version: int) -> Offer:
        headers = {TRIP_HEADER: "trip-1", VERSION_HEADER: str(version)}
        return Offer(f'{{"type":"{kind}","v":{version}}}'.encode(), kind, headers)

    fanout.broadcast(offer("trip.requested", 1))  # type: ignore[arg-type]
    fanout.broadcast(offer("trip.taken", 2))  # type: ignore[arg-type]
    fanout.broadcast(offer("trip.requested", 1))  # type: ignore[arg-type]  # relayed late
    fanout.broadcast(offer("trip.taken", 2))  # type: ignore[arg-type]  # published twice
    await settle(lambda: len(socket.sent) >= 2)
    writer.put(Frame("end", "echo.message"))
    await settle(lambda: socket.sent[-1] == "end")

    assert socket.sent == [
        '{"type":"trip.requested","v":1}',
        '{"type":"trip.taken","v":2}',
        "end",
    ]
    await stop(tasks)


async def test_the_last_frames_dropped_from_a_full_buffer_come_back_without_a_later_one() -> None:
    log = Log()
    reading = asyncio.Event()
    socket = Socket(stalled=reading)
    user = started(RIDER, log)
    writer = outgoing(user, socket)
    user.sockets.add(writer)
    tasks = await running(writer)

    await settle(lambda: True)  # the writer has caught up with the (empty) log
    user.pass_on(log.add(RIDER.id, 1))
    await settle(lambda: writer_waits_on(writer))  # it holds frame 1, blocked on the socket
    total = BUFFER_FRAMES + 50  # the last 49 find the buffer full
    for seq in range(2, total + 1):
        user.pass_on(log.add(RIDER.id, seq))
    reading.set()
    await settle(lambda: len(socket.sent) == total)

    assert socket.seqs() == list(range(1, total + 1))
    await stop(tasks)


async def test_offers_by_name_reach_each_named_free_driver_and_never_after_a_withdrawal() -> None:
    log = Log()
    users = ConnectedUsers(bind=_nothing, unbind=_nothing, log=log)
    first, second, busy = [
        await users.join(User(number, str(number), "", "", "driver", None)) for number in (1, 2, 3)
    ]
    busy.under_way = TripUnderWay("trip-0", RIDER.id, busy.user.id)
    sockets, writers, tasks = await listening(first, second, busy)
    fanout = OfferFanout(users)

    def offer(kind: str, version: int, *named: int, distances: str | None = None) -> Offer:
        headers: dict[str, Any] = {TRIP_HEADER: "trip-1", VERSION_HEADER: str(version)}
        keys = [f"user.{driver_id}" for driver_id in named]
        if len(keys) > 1:
            headers[CC_HEADER] = keys[1:]
        if distances is not None:
            headers[DISTANCES_HEADER] = distances
        body = f'{{"type":"{kind}","data":{{"v":{version}}}}}'.encode()
        return Offer(body, kind, headers, keys[0])

    # One message names several drivers of this gateway (and one elsewhere, 7), each
    # with their own distance.
    fanout.by_name(offer("trip.requested", 1, 1, 2, 3, 7, distances='{"1":50.0,"2":70.5}'))  # type: ignore[arg-type]
    fanout.by_name(offer("trip.taken", 2, 2, 3))  # type: ignore[arg-type]
    fanout.by_name(offer("trip.requested", 1, 1, 2))  # type: ignore[arg-type]  # relayed late
    for writer in writers:
        writer.put(Frame("end", "echo.message"))
    await settle(lambda: all(socket.sent[-1:] == ["end"] for socket in sockets.values()))

    assert [orjson.loads(text) for text in sockets[1].sent[:-1]] == [
        {"type": "trip.requested", "data": {"v": 1, "distance_m": 50.0}}
    ]
    assert [orjson.loads(text) for text in sockets[2].sent[:-1]] == [
        {"type": "trip.requested", "data": {"v": 1, "distance_m": 70.5}},
        {"type": "trip.taken", "data": {"v": 2}},
    ]
    assert sockets[3].sent == ["end"]  # busy
    await stop(tasks)


async def test_one_message_for_a_rider_and_a_driver_reaches_each_numbered_in_their_own_order() -> (
    None
):
    log = Log()
    users = ConnectedUsers(bind=_nothing, unbind=_nothing, log=log)
    rider, driver = await users.join(RIDER), await users.join(DRIVER)
    rider.last_seq, driver.last_seq = 4, 8
    sockets, _, tasks = await listening(rider, driver)
    inbox = Inbox(users, OfferFanout(users), locations=None)  # type: ignore[arg-type]
    trip = b'{"id":"trip-1","rider":{"id":7},"driver":{"id":42}}'
    frame = b'{"type":"trip.accepted","event_id":"e-1","data":%s}' % trip

    # Routed by the rider's key, the driver's in CC, and a user held by another gateway.
    inbox.route(
        Offer(  # type: ignore[arg-type]
            frame,
            "trip.accepted",
            {CC_HEADER: ["user.42", "user.99"], SEQS_HEADER: '{"7":5,"42":9,"99":3}'},
            "user.7",
        )
    )
    await settle(lambda: bool(sockets[RIDER.id].sent and sockets[DRIVER.id].sent))

    # Each gets the frame with their own number, byte for byte as their log keeps it.
    assert sockets[RIDER.id].sent == [with_seq(frame, 5).decode()]
    assert sockets[DRIVER.id].sent == [with_seq(frame, 9).decode()]
    assert (rider.last_seq, driver.last_seq) == (5, 9)
    await stop(tasks)
