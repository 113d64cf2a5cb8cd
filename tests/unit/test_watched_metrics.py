"""What the dashboard and the alerts read, without I/O: each way a trip goes is its own
outcome (so `no_driver` can be told from a rider's cancel), and a process counts a
failover when its database server changes under it and knows when it has no primary."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from prometheus_client import REGISTRY

from dispatcher import metrics
from shared import trips
from shared.database_watch import DatabaseWatch
from shared.db import Database
from shared.trips import Status
from shared.users import User

NOW = datetime(2024, 5, 1, 12, 0, 0, tzinfo=UTC)
LATER = NOW + timedelta(minutes=3)
RIDER = User(
    id=1, username="r@example.com", first_name="R", last_name="1", group="rider", photo=None
)
DRIVER = User(
    id=10, username="d@example.com", first_name="D", last_name="10", group="driver", photo=None
)


def trips_counted(outcome: str) -> float:
    value = REGISTRY.get_sample_value("taxi_dispatcher_trips_total", {"outcome": outcome})
    return value or 0.0


def test_every_way_a_trip_goes_is_an_outcome_of_its_own() -> None:
    requested = trips.request(uuid.uuid4(), RIDER, "A", "B", NOW).after
    accepted = trips.accept(requested, DRIVER, NOW).after
    picked_up = trips.advance(accepted, DRIVER, Status.IN_PROGRESS, NOW).after
    ways = {
        "requested": requested,
        "accepted": accepted,
        "picked_up": picked_up,
        "completed": trips.advance(picked_up, DRIVER, Status.COMPLETED, NOW).after,
        "cancelled": trips.cancel(requested, RIDER, NOW).after,
        "no_driver": trips.expire(requested, LATER).after,
        "driver_lost": trips.driver_lost(accepted, LATER).after,
    }
    assert set(ways) == set(metrics.TRIP_OUTCOMES)
    for outcome, trip in ways.items():
        assert metrics.trip_outcome(trip) == outcome
        before = trips_counted(outcome)
        metrics.count_trips([trip])
        assert trips_counted(outcome) == before + 1


class FakePool:
    def __init__(self) -> None:
        self.answer: dict[str, Any] | BaseException = {}

    async def fetchrow(self, query: str, **options: float) -> dict[str, Any]:
        if isinstance(self.answer, BaseException):
            raise self.answer
        return self.answer


class FakeDatabase(Database):
    def __init__(self) -> None:
        self.fake_pool = FakePool()

    @property
    def pool(self) -> Any:
        return self.fake_pool


def server(address: str, primary: bool = True, started: datetime = NOW) -> dict[str, Any]:
    return {"primary": primary, "address": address, "port": 5432, "started": started}


def sample(name: str) -> float:
    return REGISTRY.get_sample_value(name) or 0.0


async def test_a_process_counts_a_failover_when_its_database_server_changes() -> None:
    database = FakeDatabase()
    watch = DatabaseWatch(database)
    failovers = sample("taxi_database_failovers_total")

    database.fake_pool.answer = server("10.0.0.1")
    await watch.check()
    await watch.check()
    assert sample("taxi_database_primary") == 1
    assert sample("taxi_database_failovers_total") == failovers  # the first server is none

    database.fake_pool.answer = OSError("connection refused")
    await watch.check()
    assert sample("taxi_database_primary") == 0, "no primary while the database is away"

    database.fake_pool.answer = server("10.0.0.2")  # the promoted standby
    await watch.check()
    assert sample("taxi_database_primary") == 1
    assert sample("taxi_database_failovers_total") == failovers + 1

    database.fake_pool.answer = server("10.0.0.2", started=LATER)  # the same one restarted
    await watch.check()
    assert sample("taxi_database_failovers_total") == failovers + 2

    database.fake_pool.answer = server("10.0.0.2", primary=False, started=LATER)
    await watch.check()
    assert sample("taxi_database_primary") == 0, "a standby is no primary"
