"""The hostile-input tests' own fixtures: an event loop for the sync Hypothesis tests,
and the accounts their examples use."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from tests.clients import Account, create_account
from tests.e2e.hostile.common import EventLoopThread


@pytest.fixture(scope="module")
def loop() -> Iterator[EventLoopThread]:
    thread = EventLoopThread()
    yield thread
    thread.close()


async def _new_account(base_url: str, group: str) -> Account:
    async with httpx.AsyncClient(base_url=base_url, timeout=10) as http:
        return await create_account(http, group)


@pytest.fixture(scope="module")
def rider(loop: EventLoopThread, base_url: str) -> Account:
    """The rider who sends every hostile frame (none of them creates a trip)."""
    return loop.run(_new_account(base_url, "rider"))


@pytest.fixture(scope="module")
def driver(loop: EventLoopThread, base_url: str) -> Account:
    """The driver who reports every hostile location."""
    return loop.run(_new_account(base_url, "driver"))


@pytest.fixture(scope="module")
def trip_rider(loop: EventLoopThread, base_url: str) -> Account:
    """A rider whose socket sees only the trips the verbatim test requests."""
    return loop.run(_new_account(base_url, "rider"))
