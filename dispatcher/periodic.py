"""Jobs every worker runs in the background, one round at a time, for as long as it runs."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

import asyncpg

from shared.broker import PublishFailed
from shared.db import DATABASE_OUTAGE

log = logging.getLogger(__name__)

# What pauses a job until its next round, instead of ending it.
_RECOVERABLE: tuple[type[BaseException], ...] = (
    *DATABASE_OUTAGE,
    asyncpg.PostgresError,
    PublishFailed,
)


async def every(
    seconds: float, job: Callable[[], Awaitable[object]], name: str, *, first_after: float = 0
) -> None:
    """Run `job` every `seconds` until cancelled, the first time after `first_after`.
    A failed round is logged and the next one comes as usual: these jobs are safety
    nets, and must stay alive."""
    await asyncio.sleep(first_after)
    while True:
        try:
            await job()
        except _RECOVERABLE as exc:
            log.warning("%s paused error=%r", name, exc)
        except Exception:
            log.exception("%s round failed", name)
        await asyncio.sleep(seconds)
