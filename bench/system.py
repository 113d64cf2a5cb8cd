"""The system under test, started by the benchmark itself on the local services:
a fresh database and broker prefix, one gateway and N dispatcher workers.

By default the code is this working tree's; `code=<a checkout>` runs another
revision's gateway and workers from there (cwd and PYTHONPATH at its root, the same
Python), on a database migrated by that revision's own migrations.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import replace
from pathlib import Path
from types import TracebackType
from typing import Any

import aio_pika
import asyncpg
import psutil

from bench.resources import rabbitmq_queues
from shared.migrate import drop_database, migrate, with_database
from shared.settings import Settings
from tools.cleanup import delete_broker_objects, unique_name
from tools.processes import (
    ServiceProcess,
    dispatcher_process,
    free_port,
    gateway_process,
    gateway_url,
    readiness_url,
)

# Queue deletions run on this many channels at once (thousands of per-user queues).
DELETE_CHANNELS = 8


def checkout_env(code: Path, settings: Settings) -> dict[str, str]:
    """The environment of a process of the checkout at `code`: its modules first."""
    return {
        **os.environ,
        **settings.to_env(),
        "PYTHONUNBUFFERED": "1",
        "PYTHONPATH": str(code),
    }


class CheckoutProcess(ServiceProcess):
    """A ServiceProcess whose modules come from another checkout of the project."""

    def __init__(
        self,
        code: Path,
        module: str,
        settings: Settings,
        log_path: Path,
        *args: str,
        ready_url: str | None = None,
    ) -> None:
        super().__init__(module, settings, log_path, *args, ready_url=ready_url)
        self.code = code

    def start(self) -> CheckoutProcess:
        log = self.log_path.open("ab")
        self._process = subprocess.Popen(
            [sys.executable, "-m", self.module, *self._args],
            cwd=self.code,
            env=checkout_env(self.code, self.settings),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        return self


class LocalSystem:
    def __init__(
        self,
        workers: int,
        concurrency: int = 16,
        *,
        code: Path | None = None,
        label: str = "this tree",
    ) -> None:
        self.workers = workers
        self.concurrency = concurrency
        self.code = code
        self.label = label
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
            # Thousands of simulated users sign up and log in from one address.
            login_attempts=1_000_000,
            signup_attempts=1_000_000,
        )
        self.processes: list[ServiceProcess] = []
        self.base_url = ""
        self.queues_left: int | None = None

    async def __aenter__(self) -> LocalSystem:
        # Named, so that whoever watches a run knows what it made (and must not find
        # after it, however it ended).
        print(
            f"  system {self.label}: database {self.settings.database_name},"
            f" broker prefix {self.settings.broker_prefix}",
            file=sys.stderr,
            flush=True,
        )
        try:
            await self._start()
        except BaseException:
            await self._tear_down()
            raise
        return self

    async def _start(self) -> None:
        if self.code is None:
            await asyncio.to_thread(migrate, self.settings.database_url)
            gateway = gateway_process(self.settings, self.logs)
        else:
            await asyncio.to_thread(self._check_checkout)
            await asyncio.to_thread(self._run_in_checkout, "-m", "shared.migrate")
            gateway = self._checkout_gateway()
        await self._started(gateway)
        self.base_url = gateway_url(gateway)
        for n in range(self.workers):
            await self._started(self._worker(n))

    async def _started(self, process: ServiceProcess) -> None:
        """Start `process` and wait until it is ready. It is kept first: a run stopped
        while it waits (Ctrl-C) stops it with the rest."""
        self.processes.append(process.start())
        await asyncio.to_thread(process.wait_until_ready)

    def _worker(self, n: int) -> ServiceProcess:
        log = self.logs / f"dispatcher-{n}.log"
        args = ("--concurrency", str(self.concurrency))
        if self.code is None:
            return dispatcher_process(self.settings, log, *args)
        port = free_port()
        return CheckoutProcess(
            self.code,
            "dispatcher",
            self.settings,
            log,
            *args,
            "--metrics-port",
            str(port),
            ready_url=readiness_url(port),
        )

    def _checkout_gateway(self) -> ServiceProcess:
        assert self.code is not None
        port = free_port()
        # A revision that serves the gateway's metrics apart takes them on their own port.
        settings = replace(self.settings, port=port, metrics_port=free_port())
        return CheckoutProcess(
            self.code,
            "gateway",
            settings,
            self.logs / f"gateway-{port}.log",
            ready_url=readiness_url(port),
        )

    def _run_in_checkout(self, *argv: str) -> str:
        """`python <argv>` in the checkout; its output."""
        assert self.code is not None
        done = subprocess.run(
            [sys.executable, *argv],
            cwd=self.code,
            env=checkout_env(self.code, self.settings),
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        if done.returncode != 0:
            raise RuntimeError(f"{argv} in {self.code} failed:\n{done.stdout}{done.stderr}")
        return done.stdout

    def _check_checkout(self) -> None:
        """The checkout's processes must import its own modules, not this tree's (the
        venv's editable install points here)."""
        assert self.code is not None
        where = self._run_in_checkout(
            "-c",
            "import dispatcher, gateway, shared; "
            "print(dispatcher.__file__, gateway.__file__, shared.__file__)",
        )
        for path in where.split():
            if not Path(path).resolve().is_relative_to(self.code.resolve()):
                raise RuntimeError(f"{self.code}: processes would import {path}")

    async def database_pids(self) -> list[int]:
        """The Postgres backends serving this system's database (its processes' pools)."""
        connection = await asyncpg.connect(self.settings.database_url)
        try:
            rows = await connection.fetch(
                "SELECT pid FROM pg_stat_activity"
                " WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
        finally:
            await connection.close()
        return [int(row["pid"]) for row in rows]

    def pids(self) -> dict[str, list[int]]:
        """Each process's pid; the gateway's first, then, with TAXI_GATEWAY_PROCESSES,
        those of the processes it supervises (their CPU counts as the gateway's)."""
        gateway = self.processes[0].pid
        named = {"gateway": [gateway, *(child.pid for child in _children(gateway))]}
        for n, worker in enumerate(self.processes[1:]):
            named[f"dispatcher-{n}"] = [worker.pid]
        return named

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self._tear_down()
        if exc_type is None:
            # A run that ended well leaves nothing; one that failed keeps its processes'
            # logs, where its error points.
            shutil.rmtree(self.logs, ignore_errors=True)

    async def _tear_down(self) -> None:
        for process in self.processes:
            with contextlib.suppress(Exception):
                process.stop()
        # Listed before the shared queues go: a listing without them is another broker's.
        listed = await asyncio.to_thread(rabbitmq_queues, f"{self.settings.broker_prefix}.")
        await delete_broker_objects(self.settings)
        # Revisions with a queue per user leave one per user who ever connected.
        await delete_queues(self.settings, await self._leftover_queues(listed))
        self.queues_left = await asyncio.to_thread(self._count_queues)
        await asyncio.to_thread(drop_database, self.settings.database_url)

    async def _leftover_queues(self, listed: list[dict[str, Any]] | None) -> list[str]:
        prefix = f"{self.settings.broker_prefix}."
        if listed:
            return [str(q["name"]) for q in listed]
        # rabbitmqctl cannot see this broker: the per-user queues an older revision made.
        if self.code is None or not self.processes:
            return []
        return [f"{prefix}user.{user_id}" for user_id in await user_ids(self.settings)]

    def _count_queues(self) -> int | None:
        listed = rabbitmq_queues(f"{self.settings.broker_prefix}.")
        return None if listed is None else len(listed)


async def user_ids(settings: Settings) -> list[int]:
    try:
        connection = await asyncpg.connect(settings.database_url)
    except (OSError, asyncpg.PostgresError):
        return []
    try:
        return [row["id"] for row in await connection.fetch("SELECT id FROM users")]
    except asyncpg.PostgresError:
        return []
    finally:
        await connection.close()


async def delete_queues(settings: Settings, names: list[str]) -> None:
    """Delete queues by name, several channels at once (RabbitMQ answers a delete of a
    queue that is gone with ok too)."""
    if not names:
        return
    connection = await aio_pika.connect(settings.amqp_urls[0])
    async with connection:

        async def delete(share: list[str]) -> None:
            channel = await connection.channel()
            for name in share:
                await channel.queue_delete(name)
            await channel.close()

        await asyncio.gather(*(delete(names[i::DELETE_CHANNELS]) for i in range(DELETE_CHANNELS)))


def _children(pid: int) -> list[psutil.Process]:
    try:
        children: list[psutil.Process] = psutil.Process(pid).children()
    except psutil.NoSuchProcess:
        return []
    return children
