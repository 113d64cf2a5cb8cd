"""The gateway's local fan-out of offers, with an in-memory message and sockets."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from starlette.websockets import WebSocketDisconnect

from gateway.broker import Inbox
from gateway.offers import ConnectedDriver, OfferFanout
from shared.topology import EXCLUDE_USER_HEADER


@dataclass
class Offer:
    body: bytes
    type: str = "trip.requested"
    headers: dict[str, Any] = field(default_factory=dict)


class Socket:
    def __init__(self, fails: BaseException | None = None) -> None:
        self.received: list[str] = []
        self.fails = fails

    async def send_text(self, text: str) -> None:
        if self.fails is not None:
            raise self.fails
        self.received.append(text)


def driver(user_id: int, socket: Socket, *, busy: bool = False) -> ConnectedDriver:
    return ConnectedDriver(user_id, Inbox(messages=None, offers_paused=busy), socket.send_text)  # type: ignore[arg-type]


async def test_free_drivers_get_the_offer_busy_ones_and_the_left_out_one_do_not() -> None:
    fanout = OfferFanout()
    free, busy, winner = Socket(), Socket(), Socket()
    fanout.register(driver(1, free))
    fanout.register(driver(2, busy, busy=True))
    fanout.register(driver(3, winner))

    await fanout.deliver(Offer(b'{"type": "trip.taken"}', headers={EXCLUDE_USER_HEADER: "3"}))  # type: ignore[arg-type]

    assert free.received == ['{"type": "trip.taken"}']
    assert busy.received == []
    assert winner.received == []


async def test_a_socket_that_went_away_does_not_stop_the_others() -> None:
    fanout = OfferFanout()
    gone, before, after = Socket(WebSocketDisconnect(1006)), Socket(), Socket()
    for n, socket in enumerate((before, gone, after)):
        fanout.register(driver(n, socket))

    await fanout.deliver(Offer(b"{}"))  # type: ignore[arg-type]

    assert before.received == after.received == ["{}"]


async def test_an_unregistered_driver_gets_nothing() -> None:
    fanout = OfferFanout()
    socket = Socket()
    connected = driver(1, socket)
    fanout.register(connected)
    fanout.unregister(connected)

    await fanout.deliver(Offer(b"{}"))  # type: ignore[arg-type]

    assert socket.received == []
