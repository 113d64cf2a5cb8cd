"""Drivers' locations from the gateway to the workers' index: thinned to one a second
per driver, batched into one message, and read back into the index by a worker."""

from __future__ import annotations

import asyncio

import orjson

from dispatcher.driver_locations import LocationFeed
from dispatcher.nearby import NearbyDrivers
from gateway.connected import ConnectedUsers
from gateway.locations import DriverLocations
from shared.locations import DriverReport, Location, Point, decode_reports, encode_reports
from shared.trips import TripUnderWay
from shared.users import User


class Broker:
    """The broker, as the gateway's locations see it: what was published, in order."""

    def __init__(self) -> None:
        self.batches: list[bytes] = []
        self.live: list[tuple[int, str, bytes]] = []

    async def publish_location(self, body: bytes) -> None:
        self.batches.append(body)

    async def publish_live_location(self, rider_id: int, trip_id: str, body: bytes) -> None:
        self.live.append((rider_id, trip_id, body))


async def _nothing(user_id: int) -> None:
    return None


def driver(number: int) -> User:
    return User(number, f"d{number}@example.com", "D", "River", "driver", None)


async def test_reports_that_came_in_together_leave_as_one_message_in_order() -> None:
    now = [100.0]
    users, broker = ConnectedUsers(_nothing, _nothing), Broker()
    locations = DriverLocations(users, broker, clock=lambda: now[0], wall_clock=lambda: 5000.0)
    drivers = [await users.join(driver(n)) for n in range(1, 4)]
    publisher = asyncio.create_task(locations.run())

    for n, connected in enumerate(drivers):
        assert locations.report(connected, Location(Point(52.0 + n / 100, 4.9)))
    for _ in range(3):
        await asyncio.sleep(0)
    publisher.cancel()

    assert len(broker.batches) == 1
    reports, refused = decode_reports(broker.batches[0])
    assert refused == []
    assert [(r.driver_id, r.point, r.at, r.free) for r in reports] == [
        (1, Point(52.0, 4.9), 5000.0, True),
        (2, Point(52.01, 4.9), 5000.0, True),
        (3, Point(52.02, 4.9), 5000.0, True),
    ]


async def test_one_report_a_second_per_driver_is_acted_on() -> None:
    now = [100.0]
    users, broker = ConnectedUsers(_nothing, _nothing), Broker()
    locations = DriverLocations(users, broker, clock=lambda: now[0])
    connected = await users.join(driver(1))

    first = locations.report(connected, Location(Point(52.0, 4.9)))
    too_soon = locations.report(connected, Location(Point(52.1, 4.9)))
    now[0] += 1.0
    a_second_later = locations.report(connected, Location(Point(52.2, 4.9)))

    assert (first, too_soon, a_second_later) == (True, False, True)
    assert connected.location == Location(Point(52.2, 4.9))


async def test_a_driver_on_a_trip_is_seen_by_its_rider_only_and_dispatch_forgets_them() -> None:
    users, broker = ConnectedUsers(_nothing, _nothing), Broker()
    locations = DriverLocations(users, broker, clock=lambda: 100.0, wall_clock=lambda: 7.0)
    connected = await users.join(driver(4))
    publisher = asyncio.create_task(locations.run())
    locations.report(connected, Location(Point(52.0, 4.9), heading=90.0))
    for _ in range(3):
        await asyncio.sleep(0)

    connected.under_way = TripUnderWay("trip-9", 77, 4)
    locations.trip_changed(connected)
    for _ in range(3):
        await asyncio.sleep(0)
    publisher.cancel()

    busy = decode_reports(broker.batches[-1])[0]
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
        [
            DriverReport(1, Point(52.0, 4.9), 990.0).encode(),
            DriverReport(2, Point(52.001, 4.9), 990.0).encode(),
            b'{"driver_id": "three"}',
            DriverReport(2, None, 995.0).encode(),  # went offline
        ]
    )

    feed.apply(batch)

    found = drivers.nearest(52.0, 4.9, radius_m=1000, limit=8, now=1000.0, stale_seconds=30)
    assert [driver_id for driver_id, _ in found] == [1]
