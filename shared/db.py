"""The Postgres connection pool (asyncpg directly; see the README's design notes).

`Database` exists from start-up but opens its pool only in `start()`, which the
application's lifespan (or the worker's bootstrap) calls: no connection at import.

TAXI_DATABASE_URL may name several servers, libpq style
(`postgresql://user@h1:5432,h2:5433/taxi?target_session_attrs=read-write`): asyncpg
tries them in turn and keeps the one that accepts writes. When the primary dies, the
pool's connections to it fail (an outage, retried as any other) and every new one is
opened the same way, so the pool fills again from the promoted standby.
"""

from __future__ import annotations

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from shared.settings import Settings

# What repository functions take: a plain connection or one borrowed from the pool.
Connection = asyncpg.Connection | PoolConnectionProxy


# What an unreachable or restarting Postgres looks like to asyncpg; with several servers
# named, also none of them being the primary for a moment (during a failover).
DATABASE_OUTAGE: tuple[type[BaseException], ...] = (
    OSError,
    asyncpg.TargetServerAttributeNotMatched,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.CannotConnectNowError,
    asyncpg.AdminShutdownError,
)

NOT_REACHABLE: tuple[type[BaseException], ...] = (
    *DATABASE_OUTAGE,
    asyncpg.PostgresError,
    RuntimeError,
    TimeoutError,
)


# Every statement is prepared once per connection and run many times. Left to choose,
# Postgres plans several of ours (those taking arrays: `unnest($1::text[])`,
# `= ANY($1)`) afresh on every run, because a plan for the values at hand looks
# cheaper than a generic one; planning then costs more than running. Our statements
# look rows up by key or walk small indexed sets, so the generic plan is the plan.
SERVER_SETTINGS = {"plan_cache_mode": "force_generic_plan"}


async def _nothing_to_reset(connection: asyncpg.Connection) -> None:
    """We keep no session state (no SET, LISTEN, advisory locks or cursors), so the
    pool's default reset query on every release would be a wasted round trip; an
    open transaction is still rolled back by asyncpg itself."""


class Database:
    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._pool: asyncpg.Pool | None = None

    async def start(self) -> None:
        self._pool = await asyncpg.create_pool(
            self._settings.database_url,
            min_size=1,
            max_size=self._settings.db_pool_size,
            reset=_nothing_to_reset,
            server_settings=SERVER_SETTINGS,
        )

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.close()
            self._pool = None

    @property
    def pool(self) -> asyncpg.Pool:
        if self._pool is None:
            raise RuntimeError("the database is not started")
        return self._pool

    async def is_reachable(self) -> bool:
        try:
            return bool(await self.pool.fetchval("SELECT 1", timeout=2))
        except NOT_REACHABLE:
            return False
