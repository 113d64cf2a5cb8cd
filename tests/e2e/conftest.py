from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest

from shared.settings import Settings
from tests.processes import ServiceProcess, start_dispatcher, start_gateway


@pytest.fixture(scope="session")
def log_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("logs")


@pytest.fixture(scope="session")
def gateway_process(settings: Settings, log_dir: Path) -> Iterator[tuple[ServiceProcess, str]]:
    process, base_url = start_gateway(settings, log_dir)
    yield process, base_url
    process.stop()


@pytest.fixture(scope="session")
def base_url(gateway_process: tuple[ServiceProcess, str]) -> str:
    return gateway_process[1]


@pytest.fixture
async def http(base_url: str) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=base_url, timeout=10) as client:
        yield client


@pytest.fixture(scope="session")
def dispatchers(settings: Settings, log_dir: Path) -> Iterator[list[ServiceProcess]]:
    """Two competing dispatcher workers, as operators run them."""
    workers = [
        start_dispatcher(settings, log_dir / f"dispatcher-{n}.log", "--concurrency", "8")
        for n in range(2)
    ]
    yield workers
    for worker in workers:
        assert worker.stop() == 0, worker.log()
