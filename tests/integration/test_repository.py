"""The schema's guarantees and the dispatcher's SQL, against this run's real Postgres."""

from __future__ import annotations

import asyncio
import dataclasses
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta

import asyncpg
import orjson
import pytest

from dispatcher import handlers, notification_log, repository
from dispatcher.dispatch import Dispatch, DispatchPolicy
from dispatcher.nearby import NearbyDrivers
from dispatcher.notifications import Notification, for_user
from shared import trips
from shared.commands import CREATE_TRIP, Command, CreateTrip
from shared.locations import Point
from shared.settings import Settings
from shared.topology import SEQ_HEADER
from shared.trips import RuleViolation, Status, Trip
from shared.users import USER_COLUMNS, User, user_from_row

RACERS = 8


async def create_user(conn: asyncpg.Connection, group: str, username: str | None = None) -> User:
    row = await conn.fetchrow(
        f"""
        INSERT INTO users (username, password_hash, first_name, last_name, user_group, photo)
        VALUES ($1, 'not-a-real-hash', 'First', 'Last', $2, $3)
        RETURNING {USER_COLUMNS}
        """,
        username or f"{group}-{uuid.uuid4().hex}@example.com",
        group,
        "/media/photos/x.png" if group == "driver" else None,
    )
    assert row is not None
    return user_from_row(row)


async def create_requested_trip(conn: asyncpg.Connection, rider: User) -> Trip:
    trip = trips.request(
        uuid.uuid4(), rider, "123 Main Street", "456 South Street", datetime.now(UTC)
    ).after
    await repository.insert_trip(conn, trip)
    return trip


async def create_started_trip(conn: asyncpg.Connection, rider: User, driver: User) -> Trip:
    transition = trips.accept(await create_requested_trip(conn, rider), driver, datetime.now(UTC))
    assert await repository.save_transition(conn, transition)
    return transition.after


async def trip_row(conn: asyncpg.Connection, trip_id: uuid.UUID) -> asyncpg.Record:
    row = await conn.fetchrow("SELECT status, driver_id FROM trips WHERE id = $1", trip_id)
    assert row is not None
    return row


async def wait_until(condition: Callable[[], Awaitable[bool]], within: float = 10) -> None:
    deadline = asyncio.get_running_loop().time() + within
    while not await condition():
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


# Users


async def test_usernames_are_unique_whatever_their_case(db: asyncpg.Connection) -> None:
    name = uuid.uuid4().hex
    await create_user(db, "rider", f"Ann.{name}@Example.com")

    with pytest.raises(asyncpg.UniqueViolationError):
        await create_user(db, "driver", f"ann.{name}@example.COM")


async def test_get_user_returns_the_user_or_none(db: asyncpg.Connection) -> None:
    driver = await create_user(db, "driver")

    assert await repository.get_user(db, driver.id) == driver
    assert await repository.get_user(db, -1) is None


# Processed commands


def command_of(user: User, command_id: uuid.UUID, drop_off: str = "B St") -> Command:
    """A request under `command_id`; another `drop_off` makes it a different request."""
    return Command(command_id, CREATE_TRIP, user.id, CreateTrip("A St", drop_off), time.time())


async def earlier(
    db: asyncpg.Connection, user: User, command_id: uuid.UUID, drop_off: str = "B St"
) -> repository.Earlier | None:
    return (await repository.admit(db, command_of(user, command_id, drop_off))).earlier


async def test_a_command_is_processed_once(db: asyncpg.Connection) -> None:
    command_id = uuid.uuid4()
    user = await create_user(db, "rider")

    assert await earlier(db, user, command_id) is None
    again = await earlier(db, user, command_id)
    assert again == repository.Earlier(same_request=True, answer=None)
    assert await earlier(db, user, uuid.uuid4()) is None


async def test_a_command_id_seen_before_for_a_different_request_is_told_apart(
    db: asyncpg.Connection,
) -> None:
    command_id = uuid.uuid4()
    user = await create_user(db, "rider")
    await earlier(db, user, command_id)

    other = await earlier(db, user, command_id, drop_off="C St")

    assert other == repository.Earlier(same_request=False, answer=None)


async def test_a_rolled_back_command_can_be_processed_again(db: asyncpg.Connection) -> None:
    command_id = uuid.uuid4()
    user = await create_user(db, "rider")
    transaction = db.transaction()
    await transaction.start()
    assert await earlier(db, user, command_id) is None
    await transaction.rollback()

    assert await earlier(db, user, command_id) is None


async def test_a_refused_command_keeps_its_answer_for_a_retry(db: asyncpg.Connection) -> None:
    command_id = uuid.uuid4()
    user = await create_user(db, "rider")
    await earlier(db, user, command_id)

    await repository.keep_refusal(db, command_id, user.id, b'{"type":"error"}', keep=10)

    again = await earlier(db, user, command_id)
    assert again == repository.Earlier(same_request=True, answer=b'{"type":"error"}')


async def test_a_command_is_admitted_with_its_sender_while_their_session_is_live(
    db: asyncpg.Connection,
) -> None:
    user = await create_user(db, "rider")
    session = uuid.uuid4()
    command = dataclasses.replace(
        command_of(user, uuid.uuid4()), issued_at=time.time() - 60, session=session
    )

    assert (await repository.admit(db, command)).sender == user
    await db.execute("INSERT INTO session_ends (family, user_id) VALUES ($1, $2)", session, user.id)
    later = dataclasses.replace(command, id=uuid.uuid4())
    assert await repository.admit(db, later) == repository.Admission(None, None)
    await db.execute("UPDATE users SET is_active = false WHERE id = $1", user.id)
    assert (await repository.admit(db, command_of(user, uuid.uuid4()))).sender is None


async def test_only_a_users_newest_refusals_are_kept(db: asyncpg.Connection) -> None:
    user, other = await create_user(db, "rider"), await create_user(db, "rider")
    applied = uuid.uuid4()
    await earlier(db, user, applied)
    others_refusal = uuid.uuid4()
    await earlier(db, other, others_refusal)
    await repository.keep_refusal(db, others_refusal, other.id, b"no", keep=3)
    refused = []
    for _ in range(5):
        # One transaction each, as the worker's: each later than the one before.
        async with db.transaction():
            command_id = uuid.uuid4()
            await earlier(db, user, command_id)
            await repository.keep_refusal(db, command_id, user.id, b"no", keep=3)
        refused.append(command_id)

    kept = await db.fetch(
        "SELECT id FROM processed_commands WHERE id = ANY($1::uuid[])",
        [applied, others_refusal, *refused],
    )

    # The applied command and the other user's refusal are not theirs to forget.
    assert {row["id"] for row in kept} == {applied, others_refusal, *refused[-3:]}


# The notification log


async def test_each_users_notifications_are_numbered_in_order_and_kept_as_published(
    db: asyncpg.Connection,
) -> None:
    rider, driver = await create_user(db, "rider"), await create_user(db, "driver")
    await db.execute("UPDATE users SET last_seq = 41 WHERE id = $1", driver.id)
    offer = Notification("drivers.offers", b'{"type":"trip.requested"}', "trip.requested", 30)
    given = [
        for_user(rider.id, b'{"type":"trip.accepted","n":1}', "trip.accepted"),
        for_user(driver.id, b'{"type":"trip.accepted","n":2}', "trip.accepted"),
        offer,
        for_user(rider.id, b'{"type":"trip.in_progress","n":3}', "trip.in_progress"),
    ]

    async with db.transaction():
        recorded = await notification_log.record(
            db, given, datetime.now(UTC), exchange="test-exchange"
        )
        logged = await db.fetch(
            "SELECT user_id, seq, body FROM notifications WHERE user_id = ANY($1::bigint[])"
            " ORDER BY user_id, seq",
            [rider.id, driver.id],
        )
        queued = await db.fetch(
            "SELECT body, headers FROM outbox WHERE id = ANY($1::bigint[]) ORDER BY id",
            recorded.outbox_ids,
        )
        await db.execute("DELETE FROM outbox WHERE id = ANY($1::bigint[])", recorded.outbox_ids)

    assert [n.seq for n in recorded.notifications] == [1, 42, None, 2]
    assert recorded.notifications[2] == offer
    numbered = [n for n in recorded.notifications if n.seq is not None]
    assert [bytes(row["body"]) for row in logged] == [
        b'{"seq":1,"type":"trip.accepted","n":1}',
        b'{"seq":2,"type":"trip.in_progress","n":3}',
        b'{"seq":42,"type":"trip.accepted","n":2}',
    ]
    # What the worker publishes now is what the log keeps and what the relay would send.
    assert sorted(n.body for n in numbered) == sorted(bytes(row["body"]) for row in logged)
    assert [bytes(row["body"]) for row in queued] == [n.body for n in recorded.notifications]
    assert [orjson.loads(row["headers"]).get(SEQ_HEADER) for row in queued] == [
        "1",
        "42",
        None,
        "2",
    ]
    assert [n.headers.get(SEQ_HEADER) for n in recorded.notifications] == ["1", "42", None, "2"]


async def test_notifications_for_a_user_who_does_not_exist_are_refused(
    db: asyncpg.Connection,
) -> None:
    rider = await create_user(db, "rider")

    with pytest.raises(LookupError, match="-7"):
        async with db.transaction():
            await notification_log.record(
                db,
                [for_user(rider.id, b'{"type":"a"}', "a"), for_user(-7, b'{"type":"b"}', "b")],
                datetime.now(UTC),
                exchange="test-exchange",
            )

    assert await db.fetchval("SELECT last_seq FROM users WHERE id = $1", rider.id) == 0


# Trips


async def test_a_trip_reads_back_as_it_was_written(db: asyncpg.Connection) -> None:
    rider = await create_user(db, "rider")

    trip = await create_requested_trip(db, rider)

    assert await repository.get_trip(db, trip.id) == trip


async def test_an_unknown_trip_is_none(db: asyncpg.Connection) -> None:
    assert await repository.get_trip(db, uuid.uuid4()) is None


async def test_an_accepted_trip_reads_back_with_its_rider_and_driver(
    db: asyncpg.Connection,
) -> None:
    rider = await create_user(db, "rider")
    driver = await create_user(db, "driver")
    trip = await create_requested_trip(db, rider)
    transition = trips.accept(trip, driver, trip.created + timedelta(seconds=5))

    assert await repository.save_transition(db, transition) is True

    stored = await repository.get_trip(db, trip.id)
    assert stored == transition.after
    assert stored is not None
    assert stored.rider == rider
    assert stored.driver == driver
    assert stored.created == trip.created
    assert stored.updated == trip.created + timedelta(seconds=5)


async def test_a_trip_goes_all_the_way_to_completed(db: asyncpg.Connection) -> None:
    rider = await create_user(db, "rider")
    driver = await create_user(db, "driver")
    trip = await create_started_trip(db, rider, driver)

    for status in (Status.IN_PROGRESS, Status.COMPLETED):
        transition = trips.advance(trip, driver, status, datetime.now(UTC))
        assert await repository.save_transition(db, transition) is True
        trip = transition.after

    assert await repository.get_trip(db, trip.id) == trip


async def test_a_change_based_on_a_stale_trip_saves_nothing(db: asyncpg.Connection) -> None:
    rider = await create_user(db, "rider")
    driver = await create_user(db, "driver")
    stale = await create_requested_trip(db, rider)
    assert await repository.save_transition(db, trips.accept(stale, driver, datetime.now(UTC)))

    # The rider's cancel was decided on the trip as it was before the driver took it.
    cancel = trips.cancel(stale, rider, datetime.now(UTC))

    assert await repository.save_transition(db, cancel) is False
    row = await trip_row(db, stale.id)
    assert (row["status"], row["driver_id"]) == ("STARTED", driver.id)


async def test_a_busy_driver_cannot_accept_a_second_trip(db: asyncpg.Connection) -> None:
    rider = await create_user(db, "rider")
    driver = await create_user(db, "driver")
    await create_started_trip(db, rider, driver)
    second = await create_requested_trip(db, await create_user(db, "rider"))

    accepted = await repository.save_transition(db, trips.accept(second, driver, datetime.now(UTC)))

    assert accepted is False
    row = await trip_row(db, second.id)
    assert (row["status"], row["driver_id"]) == ("REQUESTED", None)


async def test_a_driver_whose_trip_ended_can_accept_another(db: asyncpg.Connection) -> None:
    rider = await create_user(db, "rider")
    driver = await create_user(db, "driver")
    first = await create_started_trip(db, rider, driver)
    assert await repository.save_transition(db, trips.cancel(first, rider, datetime.now(UTC)))
    second = await create_requested_trip(db, rider)

    accepted = await repository.save_transition(db, trips.accept(second, driver, datetime.now(UTC)))

    assert accepted is True
    assert (await trip_row(db, second.id))["driver_id"] == driver.id


async def test_of_racing_drivers_exactly_one_gets_the_trip(
    db: asyncpg.Connection, settings: Settings
) -> None:
    rider = await create_user(db, "rider")
    drivers = [await create_user(db, "driver") for _ in range(RACERS)]
    trip = await create_requested_trip(db, rider)
    connections = [await asyncpg.connect(settings.database_url) for _ in drivers]
    # Every driver reads the trip as REQUESTED before any of them writes.
    all_have_read = asyncio.Barrier(RACERS)

    async def accept_as(conn: asyncpg.Connection, driver: User) -> bool:
        async with conn.transaction():
            seen = await repository.get_trip(conn, trip.id)
            assert seen is not None
            transition = trips.accept(seen, driver, datetime.now(UTC))
            await all_have_read.wait()
            return await repository.save_transition(conn, transition)

    try:
        outcomes = await asyncio.gather(
            *(accept_as(conn, driver) for conn, driver in zip(connections, drivers, strict=True))
        )
    finally:
        await asyncio.gather(*(conn.close() for conn in connections))

    assert outcomes.count(True) == 1
    winner = drivers[outcomes.index(True)]
    stored = await repository.get_trip(db, trip.id)
    assert stored is not None
    assert stored.status is Status.STARTED
    assert stored.driver == winner


async def test_version_and_cancel_reason_are_saved_and_read_back(
    db: asyncpg.Connection,
) -> None:
    rider = await create_user(db, "rider")
    driver = await create_user(db, "driver")
    trip = await create_started_trip(db, rider, driver)
    cancel = trips.cancel(trip, rider, datetime.now(UTC))

    assert await repository.save_transition(db, cancel) is True

    stored = await repository.get_trip(db, trip.id)
    assert stored == cancel.after
    assert stored is not None
    assert (stored.version, stored.cancel_reason) == (3, "rider")
    assert stored.payload()["cancel_reason"] == "rider"


async def test_a_change_decided_on_an_older_version_saves_nothing(
    db: asyncpg.Connection,
) -> None:
    rider = await create_user(db, "rider")
    driver = await create_user(db, "driver")
    trip = await create_started_trip(db, rider, driver)
    picked_up = trips.advance(trip, driver, Status.IN_PROGRESS, datetime.now(UTC))
    assert await repository.save_transition(db, picked_up)

    # The same step again, decided on version 2 while the trip is at version 3.
    assert await repository.save_transition(db, picked_up) is False
    stored = await repository.get_trip(db, trip.id)
    assert stored is not None
    assert (stored.status, stored.version) == (Status.IN_PROGRESS, 3)


# A trip's pick-up and drop-off points

CENTRAAL = Point(52.378901, 4.900581)
DAM = Point(52.37308, 4.892453)


async def test_a_trips_points_read_back_as_written(db: asyncpg.Connection) -> None:
    rider = await create_user(db, "rider")
    driver = await create_user(db, "driver")
    now = datetime.now(UTC)
    trip = trips.request(uuid.uuid4(), rider, "A St", "B St", now, pick_up=CENTRAAL).after
    await repository.insert_trip(db, trip)

    assert await repository.get_trip(db, trip.id) == trip
    accepted = trips.accept(trip, driver, datetime.now(UTC))
    assert await repository.save_transition(db, accepted)
    stored = await repository.get_trip(db, trip.id)
    assert stored is not None
    assert (stored.pick_up, stored.drop_off) == (CENTRAAL, None)
    assert stored.payload()["pick_up"] == {"lat": 52.378901, "lng": 4.900581}
    assert stored.payload()["drop_off"] is None


@pytest.mark.parametrize(
    ("pick_up", "drop_off"),
    [(None, None), (CENTRAAL, DAM), (None, DAM), (Point(-90, -180), Point(90, 180))],
)
async def test_any_combination_of_points_round_trips(
    db: asyncpg.Connection, pick_up: Point | None, drop_off: Point | None
) -> None:
    rider = await create_user(db, "rider")
    trip = trips.request(
        uuid.uuid4(), rider, "A St", "B St", datetime.now(UTC), pick_up=pick_up, drop_off=drop_off
    ).after

    await repository.insert_trip(db, trip)

    assert await repository.live_trip_of(db, rider.id) == trip


async def test_create_trip_stores_the_commands_points(db: asyncpg.Connection) -> None:
    rider = await create_user(db, "rider")
    data = CreateTrip("A St", "B St", pick_up=CENTRAAL, drop_off=DAM)
    command = Command(uuid.uuid4(), CREATE_TRIP, rider.id, data, time.time())

    async with db.transaction():
        created = await handlers.create_trip(db, command, rider, datetime.now(UTC))

    assert (created.after.pick_up, created.after.drop_off) == (CENTRAAL, DAM)
    assert await repository.get_trip(db, created.after.id) == created.after


@pytest.mark.parametrize(
    ("columns", "values"),
    [
        ("pick_up_lat", "52.37"),
        ("drop_off_lng", "4.89"),
        ("pick_up_lat, pick_up_lng", "91, 4.89"),
        ("pick_up_lat, pick_up_lng", "52.37, -181"),
        ("drop_off_lat, drop_off_lng", "'NaN', 4.89"),
        ("drop_off_lat, drop_off_lng", "52.37, 'Infinity'"),
    ],
    ids=["half-a-pick-up", "half-a-drop-off", "lat-91", "lng-181", "nan", "infinity"],
)
async def test_the_schema_refuses_a_point_off_the_map_or_half_a_point(
    db: asyncpg.Connection, columns: str, values: str
) -> None:
    trip = await create_requested_trip(db, await create_user(db, "rider"))

    with pytest.raises(asyncpg.CheckViolationError):
        await db.execute(f"UPDATE trips SET ({columns}) = ROW({values}) WHERE id = $1", trip.id)

    assert await repository.get_trip(db, trip.id) == trip


# One live trip per rider


async def test_a_riders_live_trip_is_found_until_it_ends(db: asyncpg.Connection) -> None:
    rider = await create_user(db, "rider")
    assert await repository.live_trip_of(db, rider.id) is None
    trip = await create_requested_trip(db, rider)

    assert await repository.live_trip_of(db, rider.id) == trip

    assert await repository.save_transition(db, trips.cancel(trip, rider, datetime.now(UTC)))
    assert await repository.live_trip_of(db, rider.id) is None


@pytest.mark.parametrize("status", [Status.REQUESTED, Status.STARTED, Status.IN_PROGRESS])
async def test_the_schema_refuses_a_riders_second_live_trip(
    db: asyncpg.Connection, status: Status
) -> None:
    rider = await create_user(db, "rider")
    trip = await create_requested_trip(db, rider)
    if status is not Status.REQUESTED:
        driver = await create_user(db, "driver")
        assert await repository.save_transition(db, trips.accept(trip, driver, trip.created))
    if status is Status.IN_PROGRESS:
        started = await repository.get_trip(db, trip.id)
        assert started is not None and started.driver is not None
        picked_up = trips.advance(started, started.driver, status, started.created)
        assert await repository.save_transition(db, picked_up)

    with pytest.raises(asyncpg.UniqueViolationError) as violation:
        await create_requested_trip(db, rider)

    assert violation.value.constraint_name == "trips_one_live_per_rider"


async def test_a_rider_whose_trips_ended_requests_again(db: asyncpg.Connection) -> None:
    rider = await create_user(db, "rider")
    driver = await create_user(db, "driver")
    first = await create_started_trip(db, rider, driver)
    for status in (Status.IN_PROGRESS, Status.COMPLETED):
        step = trips.advance(first, driver, status, datetime.now(UTC))
        assert await repository.save_transition(db, step)
        first = step.after
    second = await create_requested_trip(db, rider)
    assert await repository.save_transition(db, trips.cancel(second, rider, datetime.now(UTC)))

    third = await create_requested_trip(db, rider)

    assert await repository.live_trip_of(db, rider.id) == third


def create_command(rider: User) -> Command:
    return Command(uuid.uuid4(), CREATE_TRIP, rider.id, CreateTrip("A St", "B St"), time.time())


async def test_create_trip_refuses_a_rider_with_a_live_trip(db: asyncpg.Connection) -> None:
    rider = await create_user(db, "rider")
    async with db.transaction():
        first = await handlers.create_trip(db, create_command(rider), rider, datetime.now(UTC))

    with pytest.raises(RuleViolation) as refused:
        async with db.transaction():
            await handlers.create_trip(db, create_command(rider), rider, datetime.now(UTC))

    assert refused.value.code == "trip_in_progress"
    assert await repository.live_trip_of(db, rider.id) == first.after


async def test_of_a_riders_racing_requests_the_retried_loser_is_refused(
    db: asyncpg.Connection, settings: Settings
) -> None:
    rider = await create_user(db, "rider")
    early = await asyncpg.connect(settings.database_url)
    late = await asyncpg.connect(settings.database_url)
    try:
        early_transaction = early.transaction()
        await early_transaction.start()
        won = await handlers.create_trip(early, create_command(rider), rider, datetime.now(UTC))
        command = create_command(rider)

        async def create_late() -> trips.Transition:
            async with late.transaction():
                return await handlers.create_trip(late, command, rider, datetime.now(UTC))

        # The late request finds no committed live trip and waits on the unique index.
        racing = asyncio.create_task(create_late())
        late_pid = late.get_server_pid()

        async def late_is_waiting_for_a_lock() -> bool:
            wait = await db.fetchval(
                "SELECT wait_event_type FROM pg_stat_activity WHERE pid = $1", late_pid
            )
            return bool(wait == "Lock")

        await wait_until(late_is_waiting_for_a_lock)
        await early_transaction.commit()
        with pytest.raises(asyncpg.UniqueViolationError):
            await racing

        # What the worker does with a unique violation: the same command, once more.
        with pytest.raises(RuleViolation) as refused:
            await create_late()
    finally:
        await early.close()
        await late.close()

    assert refused.value.code == "trip_in_progress"
    rows = await db.fetch("SELECT id FROM trips WHERE rider_id = $1", rider.id)
    assert [row["id"] for row in rows] == [won.after.id]


async def test_one_driver_cannot_hold_two_active_trips(db: asyncpg.Connection) -> None:
    rider = await create_user(db, "rider")
    driver = await create_user(db, "driver")
    await create_started_trip(db, rider, driver)
    second = await create_requested_trip(db, await create_user(db, "rider"))

    with pytest.raises(asyncpg.UniqueViolationError) as violation:
        await db.execute(
            "UPDATE trips SET status = 'IN_PROGRESS', driver_id = $2 WHERE id = $1",
            second.id,
            driver.id,
        )

    assert violation.value.constraint_name == "trips_one_active_per_driver"


async def test_one_drivers_racing_accepts_of_two_trips_cannot_both_commit(
    db: asyncpg.Connection, settings: Settings
) -> None:
    driver = await create_user(db, "driver")
    first = await create_requested_trip(db, await create_user(db, "rider"))
    second = await create_requested_trip(db, await create_user(db, "rider"))
    early = await asyncpg.connect(settings.database_url)
    late = await asyncpg.connect(settings.database_url)
    try:
        early_transaction = early.transaction()
        await early_transaction.start()
        assert await repository.save_transition(
            early, trips.accept(first, driver, datetime.now(UTC))
        )

        async def accept_second() -> bool:
            async with late.transaction():
                return await repository.save_transition(
                    late, trips.accept(second, driver, datetime.now(UTC))
                )

        # Neither sees the other's uncommitted accept, so the NOT EXISTS check passes
        # for both; the late one waits on the unique index until the early one commits.
        racing = asyncio.create_task(accept_second())
        late_pid = late.get_server_pid()

        async def late_is_waiting_for_a_lock() -> bool:
            wait = await db.fetchval(
                "SELECT wait_event_type FROM pg_stat_activity WHERE pid = $1", late_pid
            )
            return bool(wait == "Lock")

        await wait_until(late_is_waiting_for_a_lock)
        await early_transaction.commit()

        with pytest.raises(asyncpg.UniqueViolationError):
            await racing
    finally:
        await early.close()
        await late.close()

    first_row, second_row = await trip_row(db, first.id), await trip_row(db, second.id)
    assert (first_row["status"], first_row["driver_id"]) == ("STARTED", driver.id)
    assert (second_row["status"], second_row["driver_id"]) == ("REQUESTED", None)


# Rings


async def test_a_ring_passes_over_drivers_the_index_thinks_free_who_are_on_a_trip(
    db: asyncpg.Connection,
) -> None:
    """The index may still hold a driver who accepted a trip through another worker:
    the ring takes the next nearest in their place, and the index forgets them."""
    rider, other_rider = await create_user(db, "rider"), await create_user(db, "rider")
    drivers = [await create_user(db, "driver") for _ in range(4)]
    nearest = drivers[0]
    await create_started_trip(db, other_rider, nearest)
    index = NearbyDrivers()
    now = datetime.now(UTC)
    for rank, driver in enumerate(drivers):
        index.update(driver.id, CENTRAAL.lat + 0.001 * (rank + 1), CENTRAAL.lng, now.timestamp())
    dispatch = Dispatch(
        index, DispatchPolicy(radius_m=5000, max_offers=2, widen_seconds=10, stale_seconds=60)
    )
    async with db.transaction():
        created = await handlers.create_trip(
            db,
            Command(
                uuid.uuid4(),
                CREATE_TRIP,
                rider.id,
                CreateTrip("A", "B", pick_up=CENTRAAL),
                time.time(),
            ),
            rider,
            now,
        )
        audience = await dispatch.audience(db, created, now)

    assert [driver_id for driver_id, _ in audience.named] == [drivers[1].id, drivers[2].id]
    distances = [distance for _, distance in audience.named]
    assert distances == sorted(distances)
    assert await repository.offered(db, created.after.id) == {drivers[1].id: 1, drivers[2].id: 1}
    found = index.nearest(
        CENTRAAL.lat, CENTRAAL.lng, radius_m=5000, limit=10, now=now.timestamp(), stale_seconds=60
    )
    assert nearest.id not in {driver_id for driver_id, _ in found}
