"""Fault tests run their own gateway and workers on a broker prefix of their own, so
that killing and restarting them leaves the rest of the suite alone."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from pathlib import Path

import httpx
import pytest

from shared.settings import Settings
from tests.conftest import delete_broker_objects


@pytest.fixture
def chaos_settings(settings: Settings, request: pytest.FixtureRequest) -> Iterator[Settings]:
    isolated = replace(
        settings,
        broker_prefix=f"{settings.broker_prefix}-{request.node.name[:20]}".replace("_", "-"),
        log_level="INFO",
    )
    yield isolated
    asyncio.run(delete_broker_objects(isolated))


@pytest.fixture
def chaos_logs(tmp_path: Path) -> Path:
    return tmp_path


@pytest.fixture
async def http_client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=10) as client:
        yield client
