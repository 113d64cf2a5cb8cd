"""Trip dispatch end to end: real gateway, two real dispatcher processes, real clients."""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg
import httpx
import pytest
from websockets.asyncio.client import ClientConnection

from shared.settings import Settings
from tests.clients import (
    Account,
    about,
    connect,
    create_account,
    is_error,
    receive,
    receive_until,
    rider_and_driver,
    send,
)
from tools.processes import ServiceProcess

pytestmark = pytest.mark.usefixtures("dispatchers")

ADDRESSES = {"pick_up_address": "123 Main Street", "drop_off_address": "456 South Street"}


async def request_trip(rider_ws: ClientConnection, rider: Account) -> dict[str, Any]:
    """Send the course client's create.trip and return the trip as the rider sees it."""
    await send(rider_ws, {"type": "create.trip", "data": {**ADDRESSES, "rider": rider.id}})
    frame = await receive_until(rider_ws, lambda f: f["type"] in ("trip.requested", "error"))
    assert frame["type"] == "trip.requested", frame
    return dict(frame["data"])


def update(trip: dict[str, Any], status: str, driver: Account) -> dict[str, Any]:
    """The course client's update.trip: the whole trip with user ids flattened."""
    return {
        "type": "update.trip",
        "data": {
            "id": trip["id"],
            "pick_up_address": trip["pick_up_address"],
            "drop_off_address": trip["drop_off_address"],
            "status": status,
            "driver": driver.id,
            "rider": trip["rider"]["id"],
        },
    }


async def test_rider_can_create_trips(http: httpx.AsyncClient, base_url: str) -> None:
    rider = await create_account(http, "rider")
    async with await connect(base_url, rider.access) as ws:
        trip = await request_trip(ws, rider)
    assert trip["id"]
    assert trip["pick_up_address"] == ADDRESSES["pick_up_address"]
    assert trip["drop_off_address"] == ADDRESSES["drop_off_address"]
    assert trip["status"] == "REQUESTED"
    assert trip["rider"]["username"] == rider.user["username"]
    assert trip["driver"] is None


async def test_connected_driver_is_offered_new_trips(
    http: httpx.AsyncClient, base_url: str
) -> None:
    rider = await create_account(http, "rider")
    driver = await create_account(http, "driver")
    async with await connect(base_url, driver.access) as driver_ws:
        async with await connect(base_url, rider.access) as rider_ws:
            trip = await request_trip(rider_ws, rider)
        offer = await receive_until(driver_ws, about(trip["id"]))
    assert offer["type"] == "trip.requested"
    assert offer["data"] == trip
    assert offer["event_id"]


async def test_driver_update_reaches_rider_with_both_usernames(
    http: httpx.AsyncClient, base_url: str
) -> None:
    async with rider_and_driver(http, base_url) as (rider, driver, rider_ws, driver_ws):
        trip = await request_trip(rider_ws, rider)
        await send(driver_ws, update(trip, "STARTED", driver))
        seen_by_rider = await receive_until(rider_ws, about(trip["id"], "trip.accepted"))
        seen_by_driver = await receive_until(driver_ws, about(trip["id"], "trip.accepted"))
    for frame in (seen_by_rider, seen_by_driver):
        assert frame["data"]["status"] == "STARTED"
        assert frame["data"]["rider"]["username"] == rider.user["username"]
        assert frame["data"]["driver"]["username"] == driver.user["username"]


async def test_rider_and_driver_receive_updates_after_reconnecting(
    http: httpx.AsyncClient, base_url: str
) -> None:
    rider = await create_account(http, "rider")
    driver = await create_account(http, "driver")
    async with await connect(base_url, rider.access) as rider_ws:
        trip = await request_trip(rider_ws, rider)
    async with await connect(base_url, driver.access) as driver_ws:
        await send(driver_ws, update(trip, "STARTED", driver))
        await receive_until(driver_ws, about(trip["id"], "trip.accepted"))
    # Both are offline: the rider cancels nothing, the driver moves on after reconnecting.
    async with await connect(base_url, rider.access) as rider_ws:
        missed = await receive_until(rider_ws, about(trip["id"], "trip.accepted"))
        assert missed["data"]["driver"]["id"] == driver.id
        async with await connect(base_url, driver.access) as driver_ws:
            await send(driver_ws, update(trip, "IN_PROGRESS", driver))
            picked_up = await receive_until(rider_ws, about(trip["id"], "trip.picked_up"))
            assert picked_up["data"]["status"] == "IN_PROGRESS"
            confirmed = await receive_until(driver_ws, about(trip["id"], "trip.picked_up"))
            assert confirmed["event_id"] == picked_up["event_id"]


async def test_whole_lifecycle_rider_sees_each_step_in_order(
    http: httpx.AsyncClient, base_url: str, dispatchers: list[ServiceProcess]
) -> None:
    assert len(dispatchers) == 2 and all(worker.poll() is None for worker in dispatchers)
    async with rider_and_driver(http, base_url) as (rider, driver, rider_ws, driver_ws):
        trip = await request_trip(rider_ws, rider)
        await receive_until(driver_ws, about(trip["id"], "trip.requested"))
        steps = [
            ("STARTED", "trip.accepted"),
            ("IN_PROGRESS", "trip.picked_up"),
            ("COMPLETED", "trip.completed"),
        ]
        seen = []
        for status, event in steps:
            await send(driver_ws, update(trip, status, driver))
            await receive_until(driver_ws, about(trip["id"], event))
            seen.append(await receive_until(rider_ws, about(trip["id"])))
    assert [(f["type"], f["data"]["status"]) for f in seen] == [(e, s) for s, e in steps]
    assert len({f["event_id"] for f in seen}) == 3


async def test_exactly_one_of_many_racing_drivers_wins(
    http: httpx.AsyncClient, base_url: str, db: asyncpg.Connection
) -> None:
    rider = await create_account(http, "rider")
    drivers = [await create_account(http, "driver") for _ in range(8)]
    sockets = [await connect(base_url, d.access) for d in drivers]
    try:
        async with await connect(base_url, rider.access) as rider_ws:
            trip = await request_trip(rider_ws, rider)
            for ws in sockets:
                await receive_until(ws, about(trip["id"], "trip.requested"))
            await asyncio.gather(
                *(
                    send(ws, update(trip, "STARTED", d))
                    for ws, d in zip(sockets, drivers, strict=True)
                )
            )
            answers = await asyncio.gather(
                *(
                    receive_until(
                        ws, lambda f: about(trip["id"], "trip.accepted")(f) or is_error(f)
                    )
                    for ws in sockets
                )
            )
            rider_view = await receive_until(rider_ws, about(trip["id"], "trip.accepted"))
    finally:
        for ws in sockets:
            await ws.close()
    winners = [d for d, a in zip(drivers, answers, strict=True) if a["type"] == "trip.accepted"]
    losers = [a for a in answers if a["type"] == "error"]
    assert len(winners) == 1
    assert len(losers) == len(drivers) - 1
    assert {a["data"]["code"] for a in losers} == {"trip_unavailable"}
    assert all(a["data"]["request"] == "update.trip" for a in losers)
    assert rider_view["data"]["driver"]["id"] == winners[0].id
    stored = await db.fetchrow("SELECT status, driver_id FROM trips WHERE id = $1", trip["id"])
    assert (stored["status"], stored["driver_id"]) == ("STARTED", winners[0].id)


async def test_other_drivers_are_told_when_a_trip_is_taken(
    http: httpx.AsyncClient, base_url: str
) -> None:
    rider = await create_account(http, "rider")
    winner = await create_account(http, "driver")
    other = await create_account(http, "driver")
    async with (
        await connect(base_url, rider.access) as rider_ws,
        await connect(base_url, winner.access) as winner_ws,
        await connect(base_url, other.access) as other_ws,
    ):
        trip = await request_trip(rider_ws, rider)
        await receive_until(other_ws, about(trip["id"], "trip.requested"))
        await receive_until(winner_ws, about(trip["id"], "trip.requested"))
        await send(winner_ws, update(trip, "STARTED", winner))
        taken = await receive_until(other_ws, about(trip["id"]))
    assert taken["type"] == "trip.taken"
    assert taken["data"]["status"] == "STARTED"


async def test_rider_cancels_and_offered_drivers_are_told(
    http: httpx.AsyncClient, base_url: str
) -> None:
    async with rider_and_driver(http, base_url) as (rider, _driver, rider_ws, driver_ws):
        trip = await request_trip(rider_ws, rider)
        await receive_until(driver_ws, about(trip["id"], "trip.requested"))
        await send(
            rider_ws, {"type": "update.trip", "data": {"id": trip["id"], "status": "CANCELLED"}}
        )
        cancelled = await receive_until(rider_ws, about(trip["id"]))
        withdrawn = await receive_until(driver_ws, about(trip["id"]))
    assert cancelled["type"] == withdrawn["type"] == "trip.cancelled"
    assert withdrawn["data"]["status"] == "CANCELLED"


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        ({"type": "create.trip", "data": {**ADDRESSES, "rider": 999999}}, "forbidden"),
        ({"type": "create.trip", "data": {"pick_up_address": "A"}}, "invalid_data"),
        ({"type": "create.trip", "data": "A to B"}, "invalid_data"),
        (
            {"type": "update.trip", "data": {"id": "not-a-uuid", "status": "STARTED"}},
            "invalid_data",
        ),
        (
            {
                "type": "update.trip",
                "data": {"id": "0" * 8 + "-0000-0000-0000-" + "0" * 12, "status": "FLYING"},
            },
            "invalid_data",
        ),
    ],
)
async def test_gateway_refuses_bad_commands_with_an_error_frame(
    http: httpx.AsyncClient, base_url: str, frame: dict[str, Any], code: str
) -> None:
    rider = await create_account(http, "rider")
    async with await connect(base_url, rider.access) as ws:
        await send(ws, frame)
        error = await receive_until(ws, is_error)
        assert error["data"]["code"] == code
        assert error["data"]["request"] == frame["type"]
        assert error["data"]["message"]
        await send(ws, {"type": "echo.message", "data": "still open"})
        await receive_until(ws, lambda f: f == {"type": "echo.message", "data": "still open"})


async def test_rules_are_enforced_by_the_dispatcher(http: httpx.AsyncClient, base_url: str) -> None:
    rider = await create_account(http, "rider")
    other_rider = await create_account(http, "rider")
    driver = await create_account(http, "driver")
    async with (
        await connect(base_url, rider.access) as rider_ws,
        await connect(base_url, other_rider.access) as other_ws,
        await connect(base_url, driver.access) as driver_ws,
    ):
        trip = await request_trip(rider_ws, rider)
        # A driver cannot skip straight to IN_PROGRESS, nor request a trip.
        await send(driver_ws, update(trip, "IN_PROGRESS", driver))
        assert (await receive_until(driver_ws, is_error))["data"]["code"] == "forbidden"
        await send(driver_ws, {"type": "create.trip", "data": ADDRESSES})
        assert (await receive_until(driver_ws, is_error))["data"]["code"] == "forbidden"
        # Another rider cannot cancel it: to them it does not exist.
        await send(
            other_ws, {"type": "update.trip", "data": {"id": trip["id"], "status": "CANCELLED"}}
        )
        assert (await receive_until(other_ws, is_error))["data"]["code"] == "not_found"
        # The rider cannot accept their own trip.
        await send(
            rider_ws, {"type": "update.trip", "data": {"id": trip["id"], "status": "STARTED"}}
        )
        assert (await receive_until(rider_ws, is_error))["data"]["code"] == "forbidden"
        # Once in progress, it can no longer be cancelled.
        await send(driver_ws, update(trip, "STARTED", driver))
        await receive_until(driver_ws, about(trip["id"], "trip.accepted"))
        await send(driver_ws, update(trip, "IN_PROGRESS", driver))
        await receive_until(rider_ws, about(trip["id"], "trip.picked_up"))
        await send(
            rider_ws, {"type": "update.trip", "data": {"id": trip["id"], "status": "CANCELLED"}}
        )
        assert (await receive_until(rider_ws, is_error))["data"]["code"] == "invalid_transition"


async def test_busy_driver_cannot_accept_a_second_trip(
    http: httpx.AsyncClient, base_url: str
) -> None:
    riders = [await create_account(http, "rider") for _ in range(2)]
    driver = await create_account(http, "driver")
    async with await connect(base_url, driver.access) as driver_ws:
        trips = []
        for rider in riders:
            async with await connect(base_url, rider.access) as rider_ws:
                trips.append(await request_trip(rider_ws, rider))
        await send(driver_ws, update(trips[0], "STARTED", driver))
        await receive_until(driver_ws, about(trips[0]["id"], "trip.accepted"))
        await send(driver_ws, update(trips[1], "STARTED", driver))
        error = await receive_until(driver_ws, is_error)
    assert error["data"]["code"] == "driver_busy"


async def test_offline_and_busy_drivers_get_no_new_offers(
    http: httpx.AsyncClient, base_url: str, settings: Settings
) -> None:
    rider = await create_account(http, "rider")
    offline = await create_account(http, "driver")
    busy = await create_account(http, "driver")
    witness = await create_account(http, "driver")
    async with await connect(base_url, offline.access):
        pass  # the driver was here once, and left
    async with (
        await connect(base_url, rider.access) as rider_ws,
        await connect(base_url, busy.access) as busy_ws,
        await connect(base_url, witness.access) as witness_ws,
    ):
        first = await request_trip(rider_ws, rider)
        await send(busy_ws, update(first, "STARTED", busy))
        await receive_until(busy_ws, about(first["id"], "trip.accepted"))
        second_rider = await create_account(http, "rider")
        async with await connect(base_url, second_rider.access) as second_ws:
            second = await request_trip(second_ws, second_rider)
        # The witness's offer proves the broker has routed the second offer everywhere.
        await receive_until(witness_ws, about(second["id"], "trip.requested"))
        # Whatever reached the busy driver's queue before their trip ended is ahead of
        # its completion there; so if no offer precedes the completion, none was sent.
        seen_by_busy: list[dict[str, Any]] = []
        for status, event in (("IN_PROGRESS", "trip.picked_up"), ("COMPLETED", "trip.completed")):
            await send(busy_ws, update(first, status, busy))
            while not seen_by_busy or not about(first["id"], event)(seen_by_busy[-1]):
                seen_by_busy.append(await receive(busy_ws))
    assert not any(about(second["id"])(frame) for frame in seen_by_busy)
    # Nothing waited for the offline driver: back, their first frame is the echo's answer.
    async with await connect(base_url, offline.access) as offline_ws:
        await send(offline_ws, {"type": "echo.message", "data": "back"})
        assert await receive(offline_ws) == {"type": "echo.message", "data": "back"}


async def test_trip_api_follows_the_visibility_rules(
    http: httpx.AsyncClient, base_url: str
) -> None:
    rider = await create_account(http, "rider")
    other_rider = await create_account(http, "rider")
    driver = await create_account(http, "driver")
    async with await connect(base_url, rider.access) as ws:
        trip = await request_trip(ws, rider)

    def auth(account: Account) -> dict[str, str]:
        return {"Authorization": f"Bearer {account.access}"}

    mine = await http.get("/api/trip/", headers=auth(rider))
    assert mine.status_code == 200
    assert [t["id"] for t in mine.json()] == [trip["id"]]
    detail = await http.get(f"/api/trip/{trip['id']}/", headers=auth(rider))
    assert detail.json() == trip
    open_for_driver = await http.get("/api/trip/", headers=auth(driver))
    assert trip["id"] in {t["id"] for t in open_for_driver.json()}
    assert (
        await http.get(f"/api/trip/{trip['id']}/", headers=auth(other_rider))
    ).status_code == 404
    assert (await http.get("/api/trip/", headers=auth(other_rider))).json() == []
    assert (await http.get("/api/trip/")).status_code == 401
    assert (
        await http.get("/api/trip/", headers={"Authorization": f"Bearer {rider.refresh}"})
    ).status_code == 401


RACERS = 20
RACED_TRIPS = 50


async def outcome(ws: ClientConnection, trip_id: str) -> dict[str, dict[str, Any]]:
    """A racing driver's frames about the trip, by type, until its race is decided."""
    seen: dict[str, dict[str, Any]] = {}
    while not ("trip.accepted" in seen or {"error", "trip.taken"} <= seen.keys()):
        frame = await receive(ws)
        if is_error(frame) or about(trip_id)(frame):
            seen[frame["type"]] = frame
    return seen


async def test_twenty_drivers_racing_for_fifty_trips_make_fifty_single_winners(
    http: httpx.AsyncClient,
    base_url: str,
    db: asyncpg.Connection,
    dispatchers: list[ServiceProcess],
) -> None:
    assert len(dispatchers) == 2
    rider = await create_account(http, "rider")
    drivers = [await create_account(http, "driver") for _ in range(RACERS)]
    sockets = [await connect(base_url, d.access) for d in drivers]
    won: list[int] = []
    try:
        async with await connect(base_url, rider.access) as rider_ws:
            for _ in range(RACED_TRIPS):
                trip = await request_trip(rider_ws, rider)
                for ws in sockets:
                    await receive_until(ws, about(trip["id"], "trip.requested"))
                await asyncio.gather(
                    *(
                        send(ws, update(trip, "STARTED", d))
                        for ws, d in zip(sockets, drivers, strict=True)
                    )
                )
                # A winner hears `trip.accepted`; a loser hears both its refusal and
                # `trip.taken`, in either order (they travel different ways).
                answers = await asyncio.gather(*(outcome(ws, trip["id"]) for ws in sockets))
                winners = [i for i, a in enumerate(answers) if "trip.accepted" in a]
                assert len(winners) == 1, answers
                winner = winners[0]
                losers = [a for i, a in enumerate(answers) if i != winner]
                assert all(a.keys() == {"error", "trip.taken"} for a in losers), losers
                assert {a["error"]["data"]["code"] for a in losers} == {"trip_unavailable"}
                # Every other driver sees the trip leave the list of open requests.
                assert {a["trip.taken"]["data"]["status"] for a in losers} == {"STARTED"}
                seen = await receive_until(rider_ws, about(trip["id"], "trip.accepted"))
                assert seen["data"]["driver"]["id"] == drivers[winner].id
                won.append(drivers[winner].id)
                # The winner finishes the trip, so all twenty race again for the next.
                for status, event in (
                    ("IN_PROGRESS", "trip.picked_up"),
                    ("COMPLETED", "trip.completed"),
                ):
                    await send(sockets[winner], update(trip, status, drivers[winner]))
                    await receive_until(sockets[winner], about(trip["id"], event))
    finally:
        for ws in sockets:
            await ws.close()
    rows = await db.fetch(
        "SELECT driver_id, status FROM trips WHERE rider_id = $1 ORDER BY created", rider.id
    )
    assert [row["driver_id"] for row in rows] == won
    assert {row["status"] for row in rows} == {"COMPLETED"}


async def test_a_driver_cannot_move_another_drivers_trip_and_refusals_change_nothing(
    http: httpx.AsyncClient, base_url: str, db: asyncpg.Connection
) -> None:
    rider = await create_account(http, "rider")
    assigned = await create_account(http, "driver")
    intruder = await create_account(http, "driver")
    async with (
        await connect(base_url, rider.access) as rider_ws,
        await connect(base_url, assigned.access) as assigned_ws,
        await connect(base_url, intruder.access) as intruder_ws,
    ):
        trip = await request_trip(rider_ws, rider)
        await send(assigned_ws, update(trip, "STARTED", assigned))
        await receive_until(assigned_ws, about(trip["id"], "trip.accepted"))
        before = await db.fetchrow(
            "SELECT status, driver_id, updated FROM trips WHERE id = $1", trip["id"]
        )
        for status in ("IN_PROGRESS", "COMPLETED"):
            await send(intruder_ws, update(trip, status, intruder))
            refusal = await receive_until(intruder_ws, is_error)
            assert refusal["data"]["code"] == "forbidden"
        # Skipping a step is illegal even for the assigned driver.
        await send(assigned_ws, update(trip, "COMPLETED", assigned))
        assert (await receive_until(assigned_ws, is_error))["data"]["code"] == "invalid_transition"
        after = await db.fetchrow(
            "SELECT status, driver_id, updated FROM trips WHERE id = $1", trip["id"]
        )
    assert after == before
    assert (after["status"], after["driver_id"]) == ("STARTED", assigned.id)
