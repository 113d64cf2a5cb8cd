"""What every process reports about its database, for the dashboard and the alerts:
whether the server it uses is the primary, and how often that server changed.

Gateways and workers alike run a `DatabaseWatch` for as long as they run. A failover
shows as the server's address (or port) changing under the process's pool; a restart
of the same server as its start time changing. Both count as a failover here: either
way the process lost its primary and found one again.
"""

from __future__ import annotations

import asyncio

from prometheus_client import Counter, Gauge

from shared.db import NOT_REACHABLE, Database

DATABASE_PRIMARY = Gauge(
    "taxi_database_primary",
    "1 while the database server this process uses accepts writes (the primary), 0 while "
    "it is a standby or cannot be reached; checked every few seconds.",
)
DATABASE_FAILOVERS = Counter(
    "taxi_database_failovers_total",
    "Times this process found its database on another server than before, or the same "
    "one restarted: a failover to a promoted standby, or a primary's restart.",
)
WATCH_SECONDS = 5.0

_WHICH_SERVER = """
    SELECT NOT pg_is_in_recovery() AS primary,
           coalesce(host(inet_server_addr()), 'local') AS address,
           coalesce(inet_server_port(), 0) AS port,
           pg_postmaster_start_time() AS started
"""


class DatabaseWatch:
    """Keeps `taxi_database_primary` and `taxi_database_failovers_total` up to date."""

    def __init__(self, database: Database) -> None:
        self._database = database
        self._server: tuple[object, ...] | None = None

    async def check(self) -> None:
        try:
            row = await self._database.pool.fetchrow(_WHICH_SERVER, timeout=2)
        except NOT_REACHABLE:
            DATABASE_PRIMARY.set(0)
            return
        assert row is not None
        server = (row["address"], row["port"], row["started"])
        if self._server is not None and server != self._server:
            DATABASE_FAILOVERS.inc()
        self._server = server
        DATABASE_PRIMARY.set(1 if row["primary"] else 0)

    async def run(self, seconds: float = WATCH_SECONDS) -> None:
        while True:
            await self.check()
            await asyncio.sleep(seconds)
