"""dispatcher.timeouts.expire_due: requests nobody accepted in time, against real Postgres.

These tests sweep a database of their own: in the run's database, workers started by
other tests sweep too, and other tests' requests may be due; here exactly the trips a
test made due are due.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest

from dispatcher import repository
from dispatcher.timeouts import end_lost, expire_due
from shared import trips
from shared.trips import EventType, Status, Transition, Trip
from shared.users import User
from tests.integration.test_repository import create_user, wait_until

TIMEOUT = 120
NOW = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
DUE = NOW - timedelta(seconds=TIMEOUT + 1)


@pytest.fixture
async def conn(module_database_url: str) -> AsyncIterator[asyncpg.Connection]:
    connection = await asyncpg.connect(module_database_url)
    yield connection
    # Each test starts with nothing due: what one left REQUESTED ends here.
    await connection.execute("UPDATE trips SET status = 'CANCELLED' WHERE status = 'REQUESTED'")
    await connection.close()


async def requested(conn: asyncpg.Connection, created: datetime) -> Trip:
    rider = await create_user(conn, "rider")
    trip = trips.request(uuid.uuid4(), rider, "1 Main St", "2 South St", created).after
    await repository.insert_trip(conn, trip)
    return trip


async def accepted(conn: asyncpg.Connection, created: datetime) -> tuple[Trip, User]:
    driver = await create_user(conn, "driver")
    transition = trips.accept(await requested(conn, created), driver, created)
    assert await repository.save_transition(conn, transition)
    return transition.after, driver


async def sweep(conn: asyncpg.Connection, limit: int = 100) -> list[Transition]:
    async with conn.transaction():
        return await expire_due(conn, NOW, TIMEOUT, limit)


async def stored(conn: asyncpg.Connection, trip: Trip) -> Trip:
    found = await repository.get_trip(conn, trip.id)
    assert found is not None
    return found


async def test_a_due_request_is_cancelled_for_want_of_a_driver(conn: asyncpg.Connection) -> None:
    trip = await requested(conn, DUE)

    [transition] = await sweep(conn)

    assert transition.before == trip
    assert transition.event is EventType.CANCELLED
    assert transition.after.status is Status.CANCELLED
    assert transition.after.cancel_reason == "no_driver"
    assert transition.after.version == trip.version + 1 == 2
    assert transition.after.updated == NOW
    assert await stored(conn, trip) == transition.after
    assert transition.after.payload()["cancel_reason"] == "no_driver"


async def test_a_request_younger_than_the_timeout_stays_requested(
    conn: asyncpg.Connection,
) -> None:
    exactly_at_the_deadline = await requested(conn, NOW - timedelta(seconds=TIMEOUT))
    younger = await requested(conn, NOW - timedelta(seconds=1))

    assert await sweep(conn) == []

    for trip in (exactly_at_the_deadline, younger):
        assert await stored(conn, trip) == trip


async def test_a_trip_already_accepted_or_over_never_expires(conn: asyncpg.Connection) -> None:
    started, _ = await accepted(conn, DUE)
    under_way, driver = await accepted(conn, DUE)
    picked_up = trips.advance(under_way, driver, Status.IN_PROGRESS, DUE)
    assert await repository.save_transition(conn, picked_up)
    left = await requested(conn, DUE)
    cancelled = trips.cancel(left, left.rider, DUE)
    assert await repository.save_transition(conn, cancelled)

    assert await sweep(conn) == []

    for trip in (started, picked_up.after, cancelled.after):
        assert await stored(conn, trip) == trip
    assert cancelled.after.cancel_reason == "rider"


async def test_the_oldest_requests_go_first_a_batch_at_a_time(conn: asyncpg.Connection) -> None:
    oldest, older, old = [await requested(conn, DUE - timedelta(minutes=n)) for n in (3, 2, 1)]

    first = await sweep(conn, limit=2)
    second = await sweep(conn, limit=2)

    assert [t.after.id for t in first] == [oldest.id, older.id]
    assert [t.after.id for t in second] == [old.id]
    assert await sweep(conn, limit=2) == []


async def test_a_request_accepted_while_being_swept_is_skipped(
    conn: asyncpg.Connection, module_database_url: str
) -> None:
    trip = await requested(conn, DUE)
    driver = await create_user(conn, "driver")
    accepting = await asyncpg.connect(module_database_url)
    try:
        async with accepting.transaction():
            assert await repository.save_transition(accepting, trips.accept(trip, driver, NOW))
            # The accept holds the row; the sweep passes it by instead of waiting.
            assert await asyncio.wait_for(sweep(conn), 5) == []
    finally:
        await accepting.close()

    assert (await stored(conn, trip)).status is Status.STARTED


async def test_an_accept_racing_the_sweep_loses_once_the_sweep_commits(
    conn: asyncpg.Connection, module_database_url: str
) -> None:
    trip = await requested(conn, DUE)
    driver = await create_user(conn, "driver")
    accepting = await asyncpg.connect(module_database_url)
    try:
        transaction = conn.transaction()
        await transaction.start()
        [expired] = await expire_due(conn, NOW, TIMEOUT)

        async def accept() -> bool:
            async with accepting.transaction():
                return await repository.save_transition(accepting, trips.accept(trip, driver, NOW))

        racing = asyncio.create_task(accept())
        accepting_pid = accepting.get_server_pid()

        async def accept_waits_for_the_sweep() -> bool:
            wait = await asyncpg.connect(module_database_url)
            try:
                state = await wait.fetchval(
                    "SELECT wait_event_type FROM pg_stat_activity WHERE pid = $1", accepting_pid
                )
            finally:
                await wait.close()
            return bool(state == "Lock")

        await wait_until(accept_waits_for_the_sweep)
        await transaction.commit()

        assert await racing is False
    finally:
        await accepting.close()

    assert await stored(conn, trip) == expired.after
    assert expired.after.cancel_reason == "no_driver"


async def test_concurrent_sweeps_never_expire_one_trip_twice(
    conn: asyncpg.Connection, module_database_url: str
) -> None:
    due = [await requested(conn, DUE - timedelta(seconds=n)) for n in range(30)]
    sweepers = [await asyncpg.connect(module_database_url) for _ in range(3)]
    try:
        # While the first holds its batch, the others take other trips at once.
        holding = [sweeper.transaction() for sweeper in sweepers]
        for transaction in holding:
            await transaction.start()
        batches = [
            await asyncio.wait_for(expire_due(sweeper, NOW, TIMEOUT, limit=5), 5)
            for sweeper in sweepers
        ]
        for transaction in holding:
            await transaction.commit()

        async def sweep_until_done(sweeper: asyncpg.Connection) -> list[Transition]:
            expired: list[Transition] = []
            while batch := await sweep(sweeper, limit=3):
                expired.extend(batch)
            return expired

        batches.extend(await asyncio.gather(*(sweep_until_done(s) for s in sweepers)))
    finally:
        await asyncio.gather(*(sweeper.close() for sweeper in sweepers))

    assert all(len(batch) == 5 for batch in batches[:3])
    expired_ids = [t.after.id for batch in batches for t in batch]
    assert sorted(expired_ids) == sorted(trip.id for trip in due)
    for trip in due:
        after = await stored(conn, trip)
        assert (after.status, after.version, after.cancel_reason) == (
            Status.CANCELLED,
            2,
            "no_driver",
        )


# Lost drivers: trips under way whose driver vanished end as "driver_lost".

LOST_SECONDS = 300
LONG_AGO = NOW - timedelta(seconds=LOST_SECONDS + 1)
LATELY = NOW - timedelta(seconds=LOST_SECONDS - 1)


async def under_way(conn: asyncpg.Connection, changed: datetime, *, seen: datetime | None) -> Trip:
    """A STARTED trip last changed at `changed`, whose driver a gateway last saw at `seen`."""
    trip, driver = await accepted(conn, changed)
    await conn.execute("UPDATE users SET seen_at = $2 WHERE id = $1", driver.id, seen)
    return trip


async def sweep_lost(conn: asyncpg.Connection) -> list[Transition]:
    async with conn.transaction():
        return await end_lost(conn, NOW, LOST_SECONDS)


@pytest.fixture
async def nothing_under_way(conn: asyncpg.Connection) -> None:
    """What other tests left under way is over: here exactly a test's own trips are."""
    await conn.execute(
        "UPDATE trips SET status = 'COMPLETED' WHERE status IN ('STARTED', 'IN_PROGRESS')"
    )


@pytest.mark.usefixtures("nothing_under_way")
async def test_a_trip_whose_driver_was_gone_too_long_ends_as_driver_lost(
    conn: asyncpg.Connection,
) -> None:
    never_seen = await under_way(conn, LONG_AGO, seen=None)
    seen_long_ago = await under_way(conn, LONG_AGO, seen=LONG_AGO)

    ended = await sweep_lost(conn)

    assert {t.before.id for t in ended if t.before} == {never_seen.id, seen_long_ago.id}
    for transition in ended:
        assert transition.event is EventType.CANCELLED
        assert transition.after.cancel_reason == "driver_lost"
        assert transition.after.driver is not None  # told, as the rider is
        assert await stored(conn, transition.after) == transition.after


@pytest.mark.usefixtures("nothing_under_way")
async def test_a_driver_seen_lately_or_who_changed_the_trip_lately_keeps_it(
    conn: asyncpg.Connection,
) -> None:
    present = await under_way(conn, LONG_AGO, seen=LATELY)
    just_accepted = await under_way(conn, LATELY, seen=None)
    picked_up = await under_way(conn, LONG_AGO, seen=LONG_AGO)
    assert picked_up.driver is not None
    moved_on = trips.advance(picked_up, picked_up.driver, Status.IN_PROGRESS, LATELY)
    assert await repository.save_transition(conn, moved_on)

    assert await sweep_lost(conn) == []
    for trip in (present, just_accepted, moved_on.after):
        assert (await stored(conn, trip)).status in trips.ACTIVE_STATUSES


@pytest.mark.usefixtures("nothing_under_way")
async def test_a_trip_whose_driver_was_deactivated_ends_at_once(conn: asyncpg.Connection) -> None:
    trip = await under_way(conn, NOW, seen=NOW)
    assert trip.driver is not None
    await conn.execute("UPDATE users SET is_active = false WHERE id = $1", trip.driver.id)

    [transition] = await sweep_lost(conn)

    assert transition.after.id == trip.id
    assert transition.after.cancel_reason == "driver_lost"


@pytest.mark.usefixtures("nothing_under_way")
async def test_requests_and_trips_that_are_over_never_lose_a_driver(
    conn: asyncpg.Connection,
) -> None:
    await requested(conn, LONG_AGO)
    done = await under_way(conn, LONG_AGO, seen=None)
    assert done.driver is not None
    for status in (Status.IN_PROGRESS, Status.COMPLETED):
        transition = trips.advance(done, done.driver, status, LONG_AGO)
        assert await repository.save_transition(conn, transition)
        done = transition.after

    assert await sweep_lost(conn) == []
