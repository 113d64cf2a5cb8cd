"""The probe trip of a fault test: how long until a trip flows again across two gateways.

A trip is requested on one gateway, offered on the other, accepted there, the
acceptance is back with its rider, and the trip is completed. Each attempt is a new
rider and driver, so that nothing an earlier attempt left half done stands in its
way. The probe behaves as a client should during an outage: a socket refused (503)
is opened again, and a command refused with `service_unavailable` is sent again.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections.abc import Awaitable, Callable

import httpx
import websockets

from tests.clients import Account, about, command, connect, create_account, receive_until

FINISH = (("IN_PROGRESS", "trip.picked_up"), ("COMPLETED", "trip.completed"))
# A client's pace between two tries.
RETRY_PACE_SECONDS = 0.2

# Where each attempt's rider and driver come from: signed up then, or beforehand (when
# the fault takes away what signing up needs).
NewPair = Callable[[], Awaitable[tuple[Account, Account]]]


def signed_up_then(http: httpx.AsyncClient) -> NewPair:
    """Each attempt signs up its own rider and driver."""

    async def new_pair() -> tuple[Account, Account]:
        return await create_account(http, "rider"), await create_account(http, "driver")

    return new_pair


def signed_up_before(pairs: list[tuple[Account, Account]]) -> NewPair:
    """Each attempt takes the next of `pairs`; the probe fails once they are used up."""
    left = iter(pairs)

    async def new_pair() -> tuple[Account, Account]:
        pair = next(left, None)
        if pair is None:
            raise AssertionError(f"every one of the {len(pairs)} probe pairs was used")
        return pair

    return new_pair


async def time_until_a_trip_flows(
    new_pair: NewPair,
    rider_url: str,
    driver_url: str,
    label: str,
    *,
    within: float = 60,
    step_seconds: float = 10,
    met: list[str] | None = None,
) -> float:
    """Seconds from now until a trip requested at `rider_url` is offered at
    `driver_url`, accepted there and the acceptance is back with its rider (then the
    trip is completed). The offer and the acceptance are each waited for
    `step_seconds`. What each attempt met, and when each of its steps ended, is in the
    failure's message, and in `met` if given."""
    started = time.monotonic()
    met = [] if met is None else met

    def mark(what: str) -> None:
        met.append(f"{time.monotonic() - started:.2f}s {what}")

    for attempt in itertools.count():
        elapsed = time.monotonic() - started
        if elapsed > within:
            raise AssertionError(f"no trip flowed within {within}s; attempts met: {met}")
        step = "socket"
        try:
            rider, driver = await new_pair()
            mark("accounts")
            # Each socket's open and close is marked too: a slow one shows where.
            stack = contextlib.AsyncExitStack()
            async with stack:
                stack.callback(mark, "both sockets closed")
                rider_ws = await stack.enter_async_context(await connect(rider_url, rider.access))
                stack.callback(mark, "driver's socket closed")
                driver_ws = await stack.enter_async_context(
                    await connect(driver_url, driver.access)
                )
                mark("sockets open")
                stack.callback(mark, "closing the sockets")
                step = "answer to the request"
                request = {"pick_up_address": f"{label} {attempt}", "drop_off_address": "Y"}
                first = await command(
                    rider_ws,
                    {"type": "create.trip", "data": request},
                    lambda f: f["type"] == "trip.requested",
                )
                if first["type"] != "trip.requested":
                    met.append(f"{elapsed:.1f}s: {first['data']['code']}")
                    await asyncio.sleep(RETRY_PACE_SECONDS)
                    continue
                trip_id = first["data"]["id"]
                step = "offer"
                await receive_until(driver_ws, about(trip_id, "trip.requested"), step_seconds)
                step = "acceptance"
                accept = {"type": "update.trip", "data": {"id": trip_id, "status": "STARTED"}}
                accepted = await command(
                    driver_ws, accept, about(trip_id, "trip.accepted"), step_seconds
                )
                if accepted["type"] != "trip.accepted":
                    met.append(f"{elapsed:.1f}s: acceptance {accepted['data']['code']}")
                    continue
                mark("accepted")
                await receive_until(rider_ws, about(trip_id, "trip.accepted"), step_seconds)
                flowed = time.monotonic() - started
                step = "the rest of the trip"
                for status, event in FINISH:
                    frame = {"type": "update.trip", "data": {"id": trip_id, "status": status}}
                    await command(driver_ws, frame, about(trip_id, event))
                    await receive_until(rider_ws, about(trip_id, event))
                return flowed
        except websockets.InvalidStatus as refused:
            # A gateway refuses sockets (503) until its broker and database are back.
            assert refused.response.status_code == 503, refused
            met.append(f"{elapsed:.1f}s: 503")
            await asyncio.sleep(RETRY_PACE_SECONDS)
        except TimeoutError:
            met.append(f"{elapsed:.1f}s: no {step}")
        except (OSError, httpx.TransportError, websockets.ConnectionClosed) as exc:
            met.append(f"{elapsed:.1f}s: {exc!r}")
            await asyncio.sleep(RETRY_PACE_SECONDS)
    raise AssertionError("unreachable")
