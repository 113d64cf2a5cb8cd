"""Drivers' locations as this gateway handles them: thinned, kept, passed on.

A driver's `update.location` is acted on at most once a second, whichever of their
sockets sends it (more are dropped silently, as the protocol says). The location is
kept with the driver (`ConnectedUser.location`) and, while they are free, published
to the locations exchange, where every worker's index takes it
(`dispatcher.driver_locations`). The workers also hear at once when a driver turns
busy or free (a driver who just finished a trip is offered the next one without
waiting for a report) and when their last socket here closes; a worker that starts
gets every location held here.

Nothing waits on the broker: reports leave through one publisher task, and while
the broker is away they are dropped, since the next one replaces them.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable

from gateway import metrics
from gateway.connected import ConnectedUser, ConnectedUsers
from shared.locations import DriverReport, Location

log = logging.getLogger(__name__)

# A driver's reports acted on at most this often.
REPORT_INTERVAL_SECONDS = 1.0
# Reports waiting for the publisher at most; more are dropped (the broker is away).
PENDING_REPORTS = 20_000

Publish = Callable[[bytes], Awaitable[None]]


class DriverLocations:
    def __init__(
        self,
        users: ConnectedUsers,
        publish: Publish,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self._users = users
        self._publish = publish
        self._clock = clock
        self._wall_clock = wall_clock
        self._pending: asyncio.Queue[bytes] = asyncio.Queue(PENDING_REPORTS)

    def report(self, driver: ConnectedUser, location: Location) -> bool:
        """The driver's own report; False when it came too soon after the last one."""
        now = self._clock()
        if now < driver.next_report_at:
            return False
        driver.next_report_at = now + REPORT_INTERVAL_SECONDS
        if driver.location is None:
            self._users.located(driver)
        driver.location, driver.located_at = location, self._wall_clock()
        if not driver.busy:
            self._send(driver)
        return True

    def availability_changed(self, driver: ConnectedUser) -> None:
        """The driver took a trip or finished one: dispatch must know at once."""
        if driver.location is not None:
            self._send(driver)

    def gone(self, driver: ConnectedUser) -> None:
        """The driver's last socket here closed: they take no offers now."""
        if driver.location is not None:
            self._put(DriverReport(driver.user.id, None, self._wall_clock()))

    def replay(self, drivers: Iterable[ConnectedUser]) -> None:
        """A worker started: send it every location held here."""
        for driver in drivers:
            if driver.location is not None:
                self._send(driver)

    async def run(self) -> None:
        while True:
            body = await self._pending.get()
            try:
                await self._publish(body)
            except Exception as exc:
                metrics.LOCATIONS_DROPPED.inc()
                log.debug("driver report dropped error=%r", exc)

    def _send(self, driver: ConnectedUser) -> None:
        assert driver.location is not None
        self._put(
            DriverReport(
                driver.user.id, driver.location.point, driver.located_at, free=not driver.busy
            )
        )

    def _put(self, report: DriverReport) -> None:
        try:
            self._pending.put_nowait(report.encode())
        except asyncio.QueueFull:
            metrics.LOCATIONS_DROPPED.inc()
