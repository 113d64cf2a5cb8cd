"""The system under test, started by the benchmark itself on the local services:
a fresh database and broker prefix, one gateway and N dispatcher workers."""

from __future__ import annotations

import asyncio
import tempfile
from dataclasses import replace
from pathlib import Path
from types import TracebackType

from shared.cleanup import delete_broker_objects, unique_name
from shared.migrate import drop_database, migrate, with_database
from shared.processes import ServiceProcess, start_dispatcher, start_gateway
from shared.settings import Settings


class LocalSystem:
    def __init__(self, workers: int, concurrency: int = 16) -> None:
        self.workers = workers
        self.concurrency = concurrency
        self.logs = Path(tempfile.mkdtemp(prefix="taxi-bench-"))
        configured = Settings.from_env()  # the services to use: TAXI_DATABASE_URL, TAXI_AMQP_URL
        self.settings = replace(
            configured,
            env="test",
            database_url=with_database(configured.database_url, unique_name("bench")),
            broker_prefix=unique_name("bench").replace("_", "-"),
            media_dir=str(self.logs / "media"),
            password_hashing="fast",
            # Every simulated user sends far below this; the limit is not what is measured.
            rate_limit_per_second=1000,
            rate_limit_burst=1000,
        )
        self.processes: list[ServiceProcess] = []
        self.base_url = ""

    async def __aenter__(self) -> LocalSystem:
        await asyncio.to_thread(migrate, self.settings.database_url)
        gateway, self.base_url = await asyncio.to_thread(start_gateway, self.settings, self.logs)
        self.processes.append(gateway)
        for n in range(self.workers):
            self.processes.append(
                await asyncio.to_thread(
                    start_dispatcher,
                    self.settings,
                    self.logs / f"dispatcher-{n}.log",
                    "--concurrency",
                    str(self.concurrency),
                )
            )
        return self

    def pids(self) -> dict[str, list[int]]:
        named = {"gateway": [self.processes[0].pid]}
        for n, worker in enumerate(self.processes[1:]):
            named[f"dispatcher-{n}"] = [worker.pid]
        return named

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        for process in self.processes:
            process.stop()
        await delete_broker_objects(self.settings)
        await asyncio.to_thread(drop_database, self.settings.database_url)
