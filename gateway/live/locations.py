"""Drivers' locations as this gateway handles them: thinned, kept, passed on.

A driver's `update.location` is acted on at most once a second, whichever of their
sockets sends it (more are dropped silently, as the protocol says). The location is
kept with the driver (`ConnectedUser.location`), then goes one of two ways:

- while the driver is free, to the locations exchange, where every worker's index
  takes it (`dispatcher.driver_locations`);
- while they have a trip under way, to that trip's rider only, as `driver.location`
  on `user.<rider id>`: unnumbered, never kept, and dropped by the broker when the
  rider has no socket anywhere. The rider's gateway checks the trip too.

The workers also hear, with the next batch, when a driver turns busy or free (a
driver who just finished a trip is offered the next one without waiting for a
report) and when their last socket here closes; a worker that starts gets every location held here.

Nothing waits on the broker: reports leave through one publisher task, and while
the broker is away they are dropped, since the next one replaces them. The reports
for the workers go out in batches, one message for all that came in meanwhile,
every `BATCH_SECONDS` or as soon as `BATCH_REPORTS` wait: the broker's and the
workers' cost is per message, not per report (a millisecond and a half of CPU for a
message through the broker, more for each worker it reaches: `make bench
SCENARIO=hops`), so at a few hundred reports a second two batches a second cost a
fifth of what ten did, and at thousands a batch goes whenever it is full. A rider's
view of their driver goes at once. Each batch names this gateway, and one goes out
at least every `HEARTBEAT_SECONDS`, empty if need be: a worker that stops hearing
from a gateway (killed, or cut off from the broker) stops offering trips to its
drivers within TAXI_GATEWAY_SILENT_SECONDS, instead of until their locations go
stale.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import NamedTuple, Protocol

from gateway.live import metrics
from gateway.live.connected import ConnectedUser
from shared.driver_reports import DriverReport, encode_reports
from shared.locations import Location, driver_location_frame

log = logging.getLogger(__name__)

# A driver's reports acted on at most this often.
REPORT_INTERVAL_SECONDS = 1.0
# Reports waiting for the publisher at most; more are dropped (the broker is away).
PENDING_REPORTS = 20_000
# A batch, empty if need be, goes to the workers at least this often: the workers'
# sign that this gateway, and so each driver whose location it sent, is still there.
HEARTBEAT_SECONDS = 1.0
# The reports that came in within this long go to the workers as one batch: what
# dispatch knows is at most this much older, half of the shortest interval between a
# driver's reports (REPORT_INTERVAL_SECONDS).
BATCH_SECONDS = 0.5
# A batch this full goes at once, and no batch holds more (about 33 KB): at
# thousands of reports a second dispatch learns of them sooner, and a worker's
# start (every location held here at once) goes as several messages, not one.
BATCH_REPORTS = 1_000


class LocationsBroker(Protocol):
    # Names this gateway in every batch; a restarted gateway has a new one.
    gateway_id: str

    async def publish_location(self, body: bytes) -> None: ...

    async def publish_live_location(self, rider_id: int, trip_id: str, body: bytes) -> None: ...


class _Live(NamedTuple):
    """A driver's location for the rider of their trip."""

    rider_id: int
    trip_id: str
    frame: bytes


class DriverLocations:
    def __init__(
        self,
        broker: LocationsBroker,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        batch_seconds: float = BATCH_SECONDS,
        batch_reports: int = BATCH_REPORTS,
    ) -> None:
        self._broker = broker
        self._batch_seconds = batch_seconds
        self._batch_reports = batch_reports
        self._clock = clock
        self._wall_clock = wall_clock
        # What waits for the publisher: reports for the workers (encoded, in order),
        # locations for riders, and the publisher's wake-up call.
        self._reports: list[bytes] = []
        self._live: list[_Live] = []
        self._waiting = asyncio.Event()
        # Whether the reports waiting are due to go (`_batches`), and whether a batch
        # goes even if none waits (the heartbeat).
        self._batch_due = False
        self._beat = False

    def report(self, driver: ConnectedUser, location: Location) -> bool:
        """The driver's own report; False when it came too soon after the last one."""
        now = self._clock()
        if now < driver.next_report_at:
            return False
        driver.next_report_at = now + REPORT_INTERVAL_SECONDS
        driver.location, driver.located_at = location, self._wall_clock()
        if driver.under_way is None:
            self._for_dispatch(driver)
        else:
            self._for_rider(driver)
        return True

    def trip_changed(self, driver: ConnectedUser) -> None:
        """The driver took a trip or finished one: dispatch learns it with the next
        batch (to forget or offer them) rather than at their next report, and a rider
        whose driver is on the way sees where they are without waiting for it.
        Not sooner: a message of its own would cost more than a trip's other
        notifications, and a driver taken is left out of rings by Postgres anyway."""
        if driver.location is not None:
            self._for_dispatch(driver)
            if driver.under_way is not None:
                self._for_rider(driver)

    def gone(self, driver: ConnectedUser) -> None:
        """The driver's last socket here closed: they take no offers now (dispatch
        hears it with the next batch)."""
        if driver.location is not None:
            self._put_report(DriverReport.gone(driver.user.id, self._wall_clock()))

    def replay(self, drivers: Iterable[ConnectedUser]) -> None:
        """A worker started: send it every location held here."""
        for driver in drivers:
            if driver.location is not None and driver.under_way is None:
                self._for_dispatch(driver)

    async def run(self) -> None:
        batches = asyncio.create_task(self._batches())
        try:
            await self._publish_forever()
        finally:
            batches.cancel()

    async def _publish_forever(self) -> None:
        gateway_id = self._broker.gateway_id
        while True:
            await self._waiting.wait()
            self._waiting.clear()
            live, self._live = self._live, []
            for location in live:
                await self._publish(
                    self._broker.publish_live_location(
                        location.rider_id, location.trip_id, location.frame
                    ),
                    1,
                )
            if not self._batch_due:
                continue
            reports = self._reports[: self._batch_reports]
            del self._reports[: self._batch_reports]
            beat, self._beat, self._batch_due = self._beat, False, False
            if self._reports:
                self._send_batch()  # the rest, in the next message
            if reports or beat:
                await self._publish(
                    self._broker.publish_location(encode_reports(gateway_id, reports)),
                    len(reports),
                )

    async def _batches(self) -> None:
        """Every `batch_seconds`, the reports waiting go; and a batch at least every
        HEARTBEAT_SECONDS, one more (empty) message a second at most, whatever the
        number of drivers, riding along with reports when some wait anyway."""
        since_beat = HEARTBEAT_SECONDS
        while True:
            if since_beat >= HEARTBEAT_SECONDS:
                self._beat, since_beat = True, 0.0
            if self._reports or self._beat:
                self._batch_due = True
                self._waiting.set()
            await asyncio.sleep(self._batch_seconds)
            since_beat += self._batch_seconds

    async def _publish(self, publishing: Awaitable[None], reports: int) -> None:
        try:
            await publishing
        except Exception as exc:
            metrics.LOCATIONS_DROPPED.inc(reports)
            log.debug("driver reports dropped count=%d error=%r", reports, exc)

    def _for_rider(self, driver: ConnectedUser) -> None:
        trip = driver.under_way
        assert driver.location is not None and trip is not None
        if len(self._live) >= PENDING_REPORTS:
            metrics.LOCATIONS_DROPPED.inc()
            return
        frame = driver_location_frame(trip.id, driver.location, driver.located_at)
        self._live.append(_Live(trip.rider_id, trip.id, frame))
        self._waiting.set()

    def _for_dispatch(self, driver: ConnectedUser) -> None:
        assert driver.location is not None
        self._put_report(
            DriverReport.at_point(
                driver.user.id, driver.location.point, driver.located_at, free=not driver.busy
            )
        )

    def _put_report(self, report: DriverReport) -> None:
        if len(self._reports) >= PENDING_REPORTS:
            metrics.LOCATIONS_DROPPED.inc()
            return
        # It goes with the next batch (`_batches`), or now if that batch is full.
        self._reports.append(report.encode())
        if len(self._reports) >= self._batch_reports:
            self._send_batch()

    def _send_batch(self) -> None:
        """What waits goes with the publisher's next round, not at the next tick."""
        self._batch_due = True
        self._waiting.set()
