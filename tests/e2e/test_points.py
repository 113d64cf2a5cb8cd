"""A trip's pick-up and drop-off points end to end (PROTOCOL C3): a rider gives them in
`create.trip`, the trip carries them back to the rider and in every driver's offer, and
a bad point is refused with an error frame naming the field, on a socket that stays open."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from websockets.asyncio.client import ClientConnection

from tests.clients import (
    Account,
    about,
    connect,
    create_account,
    is_error,
    receive_until,
    rider_and_driver,
    send,
)

pytestmark = pytest.mark.usefixtures("dispatchers")

ADDRESSES = {"pick_up_address": "Stationsplein 1", "drop_off_address": "Dam 1"}
CENTRAAL = {"lat": 52.378901, "lng": 4.900581}
DAM = {"lat": 52.37308, "lng": 4.892453}


async def request_trip(ws: ClientConnection, data: dict[str, Any]) -> dict[str, Any]:
    await send(ws, {"type": "create.trip", "data": data})
    frame = await receive_until(ws, lambda f: f["type"] in ("trip.requested", "error"))
    assert frame["type"] == "trip.requested", frame
    return dict(frame["data"])


async def cancel(ws: ClientConnection, trip: dict[str, Any]) -> None:
    """A rider holds one live trip: end this one before requesting the next."""
    await send(ws, {"type": "update.trip", "data": {"id": trip["id"], "status": "CANCELLED"}})
    await receive_until(ws, about(trip["id"], "trip.cancelled"))


def bearer(account: Account) -> dict[str, str]:
    return {"Authorization": f"Bearer {account.access}"}


async def test_the_trip_carries_the_riders_points_back_and_in_the_offer(
    http: httpx.AsyncClient, base_url: str
) -> None:
    async with rider_and_driver(http, base_url) as (rider, _, rider_ws, driver_ws):
        # A trip with a pick-up point is offered only to drivers who say where they are
        # (PROTOCOL D1): by the first ring, or the next if the workers heard late.
        await send(driver_ws, {"type": "update.location", "data": CENTRAAL})
        trip = await request_trip(rider_ws, {**ADDRESSES, "pick_up": CENTRAAL, "drop_off": DAM})
        offer = await receive_until(driver_ws, about(trip["id"], "trip.requested"), wait_seconds=30)
        stored = await http.get(f"/api/trip/{trip['id']}/", headers=bearer(rider))
        await cancel(rider_ws, trip)

    assert (trip["pick_up"], trip["drop_off"]) == (CENTRAAL, DAM)
    assert (offer["data"]["pick_up"], offer["data"]["drop_off"]) == (CENTRAAL, DAM)
    assert stored.status_code == 200
    assert (stored.json()["pick_up"], stored.json()["drop_off"]) == (CENTRAAL, DAM)


async def test_points_left_out_or_null_come_back_as_null(
    http: httpx.AsyncClient, base_url: str
) -> None:
    rider = await create_account(http, "rider")
    async with await connect(base_url, rider.access) as ws:
        without = await request_trip(ws, dict(ADDRESSES))
        await cancel(ws, without)
        only_drop_off = await request_trip(ws, {**ADDRESSES, "pick_up": None, "drop_off": DAM})
        await cancel(ws, only_drop_off)

    assert (without["pick_up"], without["drop_off"]) == (None, None)
    assert (only_drop_off["pick_up"], only_drop_off["drop_off"]) == (None, DAM)


@pytest.mark.parametrize(
    ("field", "value", "named"),
    [
        ("pick_up", {"lat": "52.3", "lng": 4.9}, '"pick_up.lat"'),
        ("pick_up", {"lat": 91, "lng": 4.9}, '"pick_up.lat"'),
        ("drop_off", {"lat": 52.3, "lng": -181}, '"drop_off.lng"'),
        ("drop_off", {"lat": True, "lng": 4.9}, '"drop_off.lat"'),
        ("pick_up", {"lat": 52.3, "lng": {}}, '"pick_up.lng"'),
        ("pick_up", {"lat": 52.3}, '"pick_up.lng"'),
        ("drop_off", {}, '"drop_off.lat"'),
        ("pick_up", True, '"pick_up"'),
        ("drop_off", [52.3, 4.9], '"drop_off"'),
    ],
)
async def test_a_bad_point_is_refused_naming_the_field_and_the_socket_stays_open(
    http: httpx.AsyncClient, base_url: str, field: str, value: Any, named: str
) -> None:
    rider = await create_account(http, "rider")
    async with await connect(base_url, rider.access) as ws:
        await send(
            ws,
            {"type": "create.trip", "request_id": "bad-point", "data": {**ADDRESSES, field: value}},
        )
        error = await receive_until(ws, is_error)
        # Still open: the next, good request goes through.
        trip = await request_trip(ws, {**ADDRESSES, "pick_up": CENTRAAL})
        await cancel(ws, trip)

    assert error["data"]["code"] == "invalid_data"
    assert error["data"]["request"] == "create.trip"
    assert error["data"]["request_id"] == "bad-point"
    assert named in error["data"]["message"]
    assert trip["pick_up"] == CENTRAAL


@pytest.mark.parametrize("number", ["1e400", "-1e400", "1" + "0" * 400])
async def test_a_coordinate_too_big_for_a_double_is_refused_and_the_socket_stays_open(
    http: httpx.AsyncClient, base_url: str, number: str
) -> None:
    # JSON has no NaN; the nearest a client gets is a number that overflows a double.
    # The frame decoder refuses it before any field is read (orjson will not make it
    # inf), so the error is the frame's, pointing at the column where the number is.
    rider = await create_account(http, "rider")
    text = (
        '{"type": "create.trip", "data": {"pick_up_address": "A", "drop_off_address": "B",'
        f' "pick_up": {{"lat": {number}, "lng": 4.9}}}}}}'
    )
    async with await connect(base_url, rider.access) as ws:
        await ws.send(text)
        error = await receive_until(ws, is_error)
        trip = await request_trip(ws, {**ADDRESSES, "drop_off": DAM})
        await cancel(ws, trip)

    assert error["data"]["code"] == "invalid_json", error
    assert "finite numbers" in error["data"]["message"]
    assert "at character" in error["data"]["message"]
    assert trip["drop_off"] == DAM
