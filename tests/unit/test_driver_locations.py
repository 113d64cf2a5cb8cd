"""Drivers' locations from the gateway to the workers' index: thinned to one a second
per driver, batched into one message, and read back into the index by a worker."""

from __future__ import annotations

import asyncio

import orjson
import pytest

from dispatcher.driver_locations import LocationFeed
from dispatcher.nearby import NearbyDrivers
from gateway.live import locations as gateway_locations
from gateway.live.connected import ConnectedUsers
from gateway.live.locations import DriverLocations
from gateway.live.notification_log import Logged
from shared.driver_reports import DriverReport, decode_reports, encode_reports
from shared.locations import Location, Point
from shared.trips import TripUnderWay
from shared.users import User


class Broker:
    """The broker, as the gateway's locations see it: what was published, in order."""

    def __init__(self, gateway_id: str = "gw-1") -> None:
        self.gateway_id = gateway_id
        self.batches: list[bytes] = []
        self.live: list[tuple[int, str, bytes]] = []
        self.published = asyncio.Event()

    async def publish_location(self, body: bytes) -> None:
        self.batches.append(body)
        self.published.set()

    def with_reports(self) -> list[bytes]:
        """The batches published, heartbeats without reports left out."""
        return [body for body in self.batches if decode_reports(body).reports]

    async def publish_live_location(self, rider_id: int, trip_id: str, body: bytes) -> None:
        self.live.append((rider_id, trip_id, body))


async def published_with_reports(broker: Broker, count: int = 1) -> None:
    """Until `count` batches with reports went out (heartbeats aside)."""
    async with asyncio.timeout(5):
        while len(broker.with_reports()) < count:
            broker.published.clear()
            await broker.published.wait()


async def test_reports_wait_for_the_next_batch_and_go_together_with_what_came_meanwhile() -> None:
    users, broker = ConnectedUsers(_nothing, _nothing, _NoLog()), Broker()
    now = [100.0]
    locations = DriverLocations(broker, clock=lambda: now[0], batch_seconds=3600)
    first, second = [await users.join(driver(n)) for n in (1, 2)]
    publisher = asyncio.create_task(locations.run())
    await broker.published.wait()  # the first tick: the heartbeat, with nothing to report
    locations.report(first, Location(Point(52.0, 4.9)))
    locations.report(second, Location(Point(52.1, 4.9)))
    for _ in range(5):
        await asyncio.sleep(0)
    publisher.cancel()

    # An hour's batch: nothing of theirs has gone yet, however long the loop ran.
    assert broker.with_reports() == []
    assert len(broker.batches) == 1


async def test_a_full_batch_goes_at_once_without_waiting_for_its_time() -> None:
    users, broker = ConnectedUsers(_nothing, _nothing, _NoLog()), Broker()
    now = [100.0]
    locations = DriverLocations(broker, clock=lambda: now[0], batch_seconds=3600, batch_reports=3)
    drivers = [await users.join(driver(n)) for n in range(1, 5)]
    publisher = asyncio.create_task(locations.run())
    await broker.published.wait()  # the first tick: the heartbeat

    for n, connected in enumerate(drivers[:3]):
        locations.report(connected, Location(Point(52.0 + n / 100, 4.9)))
    await published_with_reports(broker)  # within seconds, not the batch's hour
    locations.report(drivers[3], Location(Point(52.5, 4.9)))
    for _ in range(5):
        await asyncio.sleep(0)
    publisher.cancel()

    # The three filled a batch, which went at once; the fourth waits for the next.
    (batch,) = broker.with_reports()
    assert [report.driver_id for report in decode_reports(batch).reports] == [1, 2, 3]


async def test_more_than_a_batch_holds_goes_as_several_messages() -> None:
    users, broker = ConnectedUsers(_nothing, _nothing, _NoLog()), Broker()
    locations = DriverLocations(broker, clock=lambda: 100.0, batch_seconds=3600, batch_reports=2)
    drivers = [await users.join(driver(n)) for n in range(1, 6)]
    for n, connected in enumerate(drivers):
        connected.location = Location(Point(52.0 + n / 100, 4.9))
    publisher = asyncio.create_task(locations.run())

    locations.replay(drivers)  # a worker started: every location held here
    await published_with_reports(broker, count=3)
    publisher.cancel()

    batches = [decode_reports(batch).reports for batch in broker.with_reports()]
    assert [[report.driver_id for report in batch] for batch in batches] == [[1, 2], [3, 4], [5]]


class _NoLog:
    async def read(self, user_id: int, after: int, upto: int | None = None) -> list[Logged]:
        return []


async def _nothing(user_id: int) -> None:
    return None


def driver(number: int) -> User:
    return User(number, f"d{number}@example.com", "D", "River", "driver", None)


async def test_reports_that_came_in_together_leave_as_one_message_in_order() -> None:
    now = [100.0]
    users, broker = ConnectedUsers(_nothing, _nothing, _NoLog()), Broker()
    locations = DriverLocations(
        broker, clock=lambda: now[0], wall_clock=lambda: 5000.0, batch_seconds=0.01
    )
    drivers = [await users.join(driver(n)) for n in range(1, 4)]
    publisher = asyncio.create_task(locations.run())

    for n, connected in enumerate(drivers):
        assert locations.report(connected, Location(Point(52.0 + n / 100, 4.9)))
    await published_with_reports(broker)
    publisher.cancel()

    (batch,) = broker.with_reports()
    gateway, reports, refused = decode_reports(batch)
    assert (gateway, refused) == ("gw-1", [])
    assert reports == [
        DriverReport(1, 52.0, 4.9, 5000.0, True),
        DriverReport(2, 52.01, 4.9, 5000.0, True),
        DriverReport(3, 52.02, 4.9, 5000.0, True),
    ]


async def test_one_report_a_second_per_driver_is_acted_on() -> None:
    now = [100.0]
    users, broker = ConnectedUsers(_nothing, _nothing, _NoLog()), Broker()
    locations = DriverLocations(broker, clock=lambda: now[0])
    connected = await users.join(driver(1))

    first = locations.report(connected, Location(Point(52.0, 4.9)))
    too_soon = locations.report(connected, Location(Point(52.1, 4.9)))
    now[0] += 1.0
    a_second_later = locations.report(connected, Location(Point(52.2, 4.9)))

    assert (first, too_soon, a_second_later) == (True, False, True)
    assert connected.location == Location(Point(52.2, 4.9))


async def test_a_driver_on_a_trip_is_seen_by_its_rider_only_and_dispatch_forgets_them() -> None:
    users, broker = ConnectedUsers(_nothing, _nothing, _NoLog()), Broker()
    locations = DriverLocations(
        broker, clock=lambda: 100.0, wall_clock=lambda: 7.0, batch_seconds=0.01
    )
    connected = await users.join(driver(4))
    publisher = asyncio.create_task(locations.run())
    locations.report(connected, Location(Point(52.0, 4.9), heading=90.0))
    await published_with_reports(broker)

    connected.under_way = TripUnderWay("trip-9", 77, 4)
    locations.trip_changed(connected)
    await published_with_reports(broker, count=2)
    publisher.cancel()

    busy = decode_reports(broker.batches[-1]).reports
    assert [(r.driver_id, r.free) for r in busy] == [(4, False)]
    ((rider_id, trip_id, frame),) = broker.live
    assert (rider_id, trip_id) == (77, "trip-9")
    assert orjson.loads(frame) == {
        "type": "driver.location",
        "data": {
            "trip_id": "trip-9",
            "lat": 52.0,
            "lng": 4.9,
            "heading": 90.0,
            "at": "1970-01-01T00:00:07Z",
        },
    }


def test_a_worker_reads_a_batch_into_its_index_and_skips_what_is_no_report() -> None:
    drivers = NearbyDrivers()
    feed = LocationFeed(drivers, stale_seconds=30, clock=lambda: 1000.0)
    batch = encode_reports(
        "gw-1",
        [
            DriverReport(1, 52.0, 4.9, 990.0).encode(),
            DriverReport(2, 52.001, 4.9, 990.0).encode(),
            DriverReport(3, 95.0, 4.9, 990.0).encode(),  # no place on earth
            DriverReport.gone(2, 995.0).encode(),  # went offline
        ],
    )

    feed.apply(batch)

    found = drivers.nearest(52.0, 4.9, radius_m=1000, limit=8, now=1000.0, stale_seconds=30)
    assert [driver_id for driver_id, _ in found] == [1]


async def test_a_gateway_names_itself_and_speaks_every_second_with_nothing_to_report(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(gateway_locations, "HEARTBEAT_SECONDS", 0.01)
    broker = Broker("gw-7")
    # No driver reports here: the heartbeat never looks at the users.
    locations = DriverLocations(broker)
    publisher = asyncio.create_task(locations.run())
    try:
        async with asyncio.timeout(5):
            while len(broker.batches) < 3:
                broker.published.clear()
                await broker.published.wait()
    finally:
        publisher.cancel()

    assert [decode_reports(body) for body in broker.batches[:3]] == [("gw-7", [], [])] * 3


def test_a_batch_reads_back_with_its_gateway_and_one_without_reads_as_from_nobody() -> None:
    report = DriverReport(1, 52.0, 4.9, 990.0)

    assert decode_reports(encode_reports("gw-1", [report.encode()])) == ("gw-1", [report], [])
    # As earlier releases sent them: JSON, naming the gateway or not.
    legacy = b'{"driver_id": 1, "lat": 52.0, "lng": 4.9, "at": 990.0, "free": true}'
    assert decode_reports(b'{"gateway": "gw-1", "reports": [' + legacy + b"]}") == (
        "gw-1",
        [report],
        [],
    )
    assert decode_reports(b"[" + legacy + b"]") == (None, [report], [])
    assert decode_reports(b'{"gateway": 5, "reports": []}').refused != []
    assert decode_reports(encode_reports("gw-1", [report.encode()])[:-1]).refused != []


def test_a_worker_passes_over_the_drivers_of_a_gateway_it_stopped_hearing() -> None:
    """Gateway A's drivers are nearest; A is killed and B keeps speaking: within the
    silence allowed, B's driver is the nearest the worker knows."""
    heard_at = [0.0]
    drivers = NearbyDrivers(silent_seconds=3)
    feed = LocationFeed(
        drivers, stale_seconds=30, clock=lambda: 1000.0, heard_clock=lambda: heard_at[0]
    )
    near, farther = (
        DriverReport(1, 52.0, 4.9, 999.0),
        DriverReport(2, 52.01, 4.9, 999.0),
    )
    feed.apply(encode_reports("A", [near.encode()]))
    feed.apply(encode_reports("B", [farther.encode()]))

    def found() -> list[int]:
        return [
            d
            for d, _ in drivers.nearest(
                52.0, 4.9, radius_m=3000, limit=8, now=1000.0, stale_seconds=30
            )
        ]

    assert found() == [1, 2]
    for second in range(1, 5):  # A was killed at 0; B's heartbeats come on
        heard_at[0] = float(second)
        feed.apply(encode_reports("B", []))
    assert found() == [2]


def test_a_driver_gone_from_one_gateway_stays_while_reporting_through_another() -> None:
    drivers = NearbyDrivers()
    feed = LocationFeed(drivers, stale_seconds=30, clock=lambda: 1000.0, heard_clock=lambda: 0.0)
    feed.apply(encode_reports("A", [DriverReport(1, 52.0, 4.9, 998.0).encode()]))
    feed.apply(encode_reports("B", [DriverReport(1, 52.0, 4.9, 999.0).encode()]))

    feed.apply(encode_reports("A", [DriverReport.gone(1, 999.5).encode()]))
    assert len(drivers) == 1
    feed.apply(encode_reports("B", [DriverReport.gone(1, 999.6).encode()]))
    assert len(drivers) == 0
