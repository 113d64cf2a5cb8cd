"""The dispatcher worker: consume commands, apply each in one transaction, notify.

Workers are stateless competing consumers of one durable queue; run as many as
the load needs. For each command:

1. one Postgres transaction records the command id (a redelivery stops here),
   applies the handler's change, chooses the drivers to offer a new trip to
   (`dispatcher.dispatch`) and stores the notifications it causes (outbox);
2. after commit, the notifications are published with confirms and their outbox
   rows deleted (the relay publishes whatever this step did not);
3. only then is the command acknowledged to the broker.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import time
from collections.abc import Awaitable
from dataclasses import dataclass
from datetime import UTC, datetime

import asyncpg
from aio_pika.abc import (
    AbstractChannel,
    AbstractIncomingMessage,
    AbstractQueue,
    AbstractRobustConnection,
)
from aio_pika.exceptions import AMQPError
from opentelemetry.trace import SpanKind

from dispatcher import (
    driver_locations,
    metrics,
    notification_log,
    periodic,
    repository,
    retention,
    timeouts,
)
from dispatcher.dispatch import Dispatch, DispatchPolicy
from dispatcher.nearby import NearbyDrivers
from dispatcher.notifications import (
    NOBODY,
    Audience,
    Notification,
    for_refusal,
    for_transition,
    offers,
    reply,
    withdrawn,
)
from dispatcher.outbox import OutboxRelay, Published
from dispatcher.publisher import NotificationPublisher
from dispatcher.registry import HANDLERS, Handler
from shared import broker, gc_pauses, tracing
from shared import metrics as shared_metrics
from shared.commands import Command, InvalidCommand, decode_command
from shared.database_watch import WATCH_SECONDS, DatabaseWatch
from shared.db import DATABASE_OUTAGE, NOT_REACHABLE, Connection, Database
from shared.settings import Settings
from shared.topology import Topology
from shared.trips import WITHDRAWN, EventType, RuleViolation, Trip, Withdrawal, offer_expired
from shared.wire import ErrorCode

log = logging.getLogger(__name__)

# A command that fails this many deliveries is dead-lettered instead of retried.
MAX_DELIVERIES = 5
# Losing a race on a unique index is retried at once, this many times.
MAX_CONFLICT_RETRIES = 3
# While the database is unreachable, retry with backoff up to this interval.
MAX_BACKOFF_SECONDS = 5.0
# Commands in flight at a stop get this long to finish; a supervisor (honcho, the
# kubelet) kills a process that takes longer than about 5 s to stop.
SHUTDOWN_GRACE_SECONDS = 3
# Requests expired, or widened, in one transaction; more wait for the next round at once.
EXPIRY_BATCH = 100
WIDEN_BATCH = 100
LOST_BATCH = 100
# Open trips whose offers past their window are withdrawn in one transaction.
OFFER_EXPIRY_BATCH = 100
# Requests one round of the matched policy pairs at most; more wait for the next.
MATCH_BATCH = 500
# A refused command is remembered with its refusal (a retry of its request_id gets the
# same answer) for the user's newest this many refusals; older ones are forgotten, so
# that no user can make the database keep more by sending commands that are refused.
REFUSALS_KEPT_PER_USER = 100
# Drivers whose location went stale leave the index this often.
SWEEP_SECONDS = 5
# Each broker call made while stopping gets this long: during an outage it would
# otherwise wait for a reconnection that is not coming.
STOP_STEP_SECONDS = 1


class ServiceUnreachable(Exception):
    """Postgres or RabbitMQ did not answer at start-up; the message says which."""


@dataclass(frozen=True, slots=True)
class Outcome:
    """What applying a command came to: applied, refused (by a rule) or duplicate."""

    kind: str
    outbox_ids: list[int]
    notifications: list[Notification]
    # The trips it changed, as they now are (counted in the metrics once committed).
    trips: tuple[Trip, ...] = ()


class Worker:
    def __init__(
        self, settings: Settings, *, concurrency: int, prefetch: int, metrics_port: int = 0
    ) -> None:
        self._settings = settings
        self._metrics_port = metrics_port
        self._connection: AbstractRobustConnection | None = None
        self._consuming = False
        self._topology = Topology(settings.broker_prefix)
        self._database = Database(settings)
        self._published = Published(self._database)
        self._database_watch = DatabaseWatch(self._database)
        self._watch_channel: AbstractChannel | None = None
        self._slots = asyncio.Semaphore(concurrency)
        self._concurrency = concurrency
        self._prefetch = prefetch
        self._in_flight: set[asyncio.Task[None]] = set()
        self._publisher: NotificationPublisher | None = None
        drivers = NearbyDrivers(silent_seconds=settings.gateway_silent_seconds)
        self._dispatch = Dispatch(drivers, DispatchPolicy.from_settings(settings))
        self._locations = driver_locations.LocationFeed(drivers, settings.location_stale_seconds)
        # An offer is worth nothing once its window has passed, wherever it still waits.
        self._offer_ttl = min(settings.offer_ttl_seconds, settings.offer_seconds)

    async def run(self, stopping: asyncio.Event) -> None:
        # Bound first, so that a port in use stops the worker at once with a clear error.
        listener = (
            shared_metrics.bind(self._settings.host, self._metrics_port)
            if self._metrics_port
            else None
        )
        try:
            await self._database.start()
        except NOT_REACHABLE as exc:
            raise ServiceUnreachable(f"cannot reach Postgres at TAXI_DATABASE_URL: {exc}") from None
        try:
            connection = self._connection = await broker.connect(self._settings, "dispatcher")
        except (OSError, AMQPError) as exc:
            await self._database.close()
            raise ServiceUnreachable(f"cannot reach RabbitMQ at TAXI_AMQP_URL: {exc}") from None
        health = shared_metrics.metrics_server(
            metrics.health_app(self.readiness), self._settings.host, self._metrics_port
        )
        serving = asyncio.create_task(health.serve([listener])) if listener else None
        try:
            publish_channel = await connection.channel(publisher_confirms=True)
            commands, notifications = await broker.declare_exchanges(
                publish_channel, self._topology
            )
            self._publisher = NotificationPublisher(notifications)
            consume_channel = await connection.channel()
            await consume_channel.set_qos(prefetch_count=self._prefetch)
            queue = await broker.declare_dispatcher_queue(consume_channel, self._topology, commands)
            # Drivers' locations first: the first trips are then offered by distance.
            await self._locations.start(await connection.channel(), self._topology, notifications)
            background = self._start_background_jobs(self._publisher)
            consumer_tag = await queue.consume(self._on_message)
            self._consuming = True
            gc.freeze()  # what exists now lives as long as the worker; see gateway/app.py
            gc_pauses.watch()
            log.info(
                "dispatcher ready queue=%s concurrency=%d prefetch=%d metrics=%s",
                queue.name,
                self._concurrency,
                self._prefetch,
                f"http://{self._settings.host}:{self._metrics_port}/metrics"
                if self._metrics_port
                else "off",
            )
            await stopping.wait()
            self._consuming = False
            metrics.READY.set(0)
            await self._drain(queue, consumer_tag)
            for task in background:
                task.cancel()
            with contextlib.suppress(*DATABASE_OUTAGE):
                await self._published.flush()
        finally:
            if serving is not None:
                health.should_exit = True
                await serving
            with contextlib.suppress(Exception):
                await asyncio.wait_for(connection.close(), STOP_STEP_SECONDS)
            await self._database.close()
        log.info("dispatcher stopped")

    def _start_background_jobs(self, publisher: NotificationPublisher) -> list[asyncio.Task[None]]:
        """What every worker does beside commands, each a safety net that any number of
        workers share: publish what a crash left in the outbox, offer requests nobody took
        to a wider ring, withdraw offers left unanswered past their window, end requests
        nobody took in time, and prune the tables that grow with traffic; under the
        matched policy, pair waiting requests with drivers (one worker a round). Beside
        them, each keeps its own index of drivers fresh."""
        jobs = [
            asyncio.create_task(OutboxRelay(self._database, publisher).run()),
            asyncio.create_task(self._published.run()),
            # After a second, so the index holds what the gateways sent on request.
            asyncio.create_task(
                periodic.every(1, self._widen_rings, "widening rings", first_after=1)
            ),
            asyncio.create_task(periodic.every(1, self._expire_requests, "request timeouts")),
            asyncio.create_task(periodic.every(1, self._expire_offers, "offer windows")),
            asyncio.create_task(
                periodic.every(
                    _lost_sweep_seconds(self._settings), self._end_lost_trips, "lost drivers"
                )
            ),
            asyncio.create_task(
                periodic.every(SWEEP_SECONDS, self._locations.sweep, "stale locations")
            ),
            asyncio.create_task(
                periodic.every(_prune_interval(self._settings), self._prune, "pruning")
            ),
            asyncio.create_task(periodic.every(WATCH_SECONDS, self._watch, "metrics watch")),
        ]
        if self._settings.dispatch_policy == "matched":
            jobs.append(
                asyncio.create_task(
                    periodic.every(
                        self._settings.match_seconds,
                        self._match_round,
                        "matching",
                        # As the rings: once the index holds what the gateways sent.
                        first_after=1,
                    )
                )
            )
        return jobs

    async def _drain(self, queue: AbstractQueue, consumer_tag: str) -> None:
        """Take no new commands and let those in flight finish. With the broker away
        they could not be acknowledged anyway: they are abandoned, and the broker
        delivers them again (a redelivery is a no-op once applied)."""
        connected = self._connection is not None and self._connection.connected.is_set()
        log.info(
            "dispatcher stopping: no new commands, finishing %d%s",
            len(self._in_flight),
            "" if connected else " (broker unreachable: they will be redelivered)",
        )
        if connected:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(queue.cancel(consumer_tag), STOP_STEP_SECONDS)
            if self._in_flight:
                await asyncio.wait(self._in_flight, timeout=SHUTDOWN_GRACE_SECONDS)
        for task in self._in_flight:
            task.cancel()

    async def readiness(self) -> dict[str, bool]:
        connected = self._connection is not None and self._connection.connected.is_set()
        return {
            "database": await self._database.is_reachable(),
            "broker": connected,
            "consuming": self._consuming,
        }

    async def _on_message(self, message: AbstractIncomingMessage) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._in_flight.add(task)
        try:
            async with self._slots:
                await self._process(message)
        finally:
            self._in_flight.discard(task)

    async def _process(self, message: AbstractIncomingMessage) -> None:
        if tracing.enabled:
            # A child of the gateway's publish, whose context the command's headers carry.
            with tracing.span(
                f"{message.routing_key} process",
                SpanKind.CONSUMER,
                parent=tracing.extract(message.headers),
                attributes={"messaging.message.id": message.message_id or ""},
            ):
                await self._process_command(message)
            return
        await self._process_command(message)

    async def _process_command(self, message: AbstractIncomingMessage) -> None:
        if message.redelivered:
            metrics.REDELIVERIES.inc()
        try:
            command = decode_command(message.body)
            handler = HANDLERS[command.type]
        except (InvalidCommand, KeyError) as exc:
            log.error("dead-lettering message_id=%s reason=%r", message.message_id, exc)
            metrics.COMMANDS.labels("unknown", "invalid").inc()
            metrics.DEAD_LETTERED.inc()
            await message.reject(requeue=False)
            return
        started = time.perf_counter()
        try:
            outcome = await self._apply(command, handler)
        except Exception as exc:
            await self._give_back(message, command, exc)
            return
        if tracing.enabled:
            with tracing.span(
                "notifications publish",
                SpanKind.PRODUCER,
                attributes={"messaging.batch.message_count": len(outcome.notifications)},
            ):
                await self._publish(outcome)
        else:
            await self._publish(outcome)
        metrics.observe_latency(command.sent_at, outcome.trips)
        await _settle(message.ack(), command)
        metrics.COMMANDS.labels(command.type, outcome.kind).inc()
        metrics.HANDLER_SECONDS.labels(command.type).observe(time.perf_counter() - started)

    async def _apply(self, command: Command, handler: Handler) -> Outcome:
        """Apply the command in one transaction, retrying while the database is away."""
        backoff = 0.1
        conflicts = 0
        while True:
            try:
                if tracing.enabled:
                    with tracing.span("transaction", attributes={"taxi.command": command.type}):
                        return await self._transaction(command, handler)
                return await self._transaction(command, handler)
            except asyncpg.UniqueViolationError:
                conflicts += 1
                if conflicts > MAX_CONFLICT_RETRIES:
                    raise
            except DATABASE_OUTAGE as exc:
                log.warning(
                    "database unavailable, will retry message_id=%s in=%.1fs error=%r",
                    command.id,
                    backoff,
                    exc,
                )
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, MAX_BACKOFF_SECONDS)

    async def _transaction(self, command: Command, handler: Handler) -> Outcome:
        async with self._database.pool.acquire() as conn, conn.transaction():
            admission = await repository.admit(conn, command)
            earlier = admission.earlier
            now = datetime.now(UTC)
            if earlier is not None and not earlier.same_request:
                log.debug("request id reused message_id=%s", command.id)
                refused = for_refusal(
                    command.user_id,
                    ErrorCode.REQUEST_ID_REUSED,
                    "this request_id was already used for a different request, which stands; "
                    "give every new request a new request_id",
                    command.type,
                    command.request_id,
                    command.trip_id,
                )
                return await self._record(conn, "reused", [refused], now)
            if earlier is not None:
                # One line per command is DEBUG: at INFO the log stays readable under load.
                log.debug("duplicate ignored message_id=%s", command.id)
                if earlier.answer is None:
                    return Outcome("duplicate", [], [])
                # A retry of a refused request gets the same answer again.
                again = reply(command.user_id, earlier.answer)
                return await self._record(conn, "duplicate", [again], now)
            changed: tuple[Trip, ...] = ()
            try:
                change = await handler(conn, command, admission.sender, now)
            except RuleViolation as refusal:
                log.debug(
                    "command refused message_id=%s user_id=%s code=%s",
                    command.id,
                    command.user_id,
                    refusal.code,
                )
                kind = "refused"
                refused = for_refusal(
                    command.user_id,
                    refusal.code,
                    refusal.message,
                    command.type,
                    command.request_id,
                    command.trip_id,
                )
                await repository.keep_refusal(
                    conn, command.id, command.user_id, refused.body, REFUSALS_KEPT_PER_USER
                )
                notifications = [refused]
            else:
                kind = "applied"
                if isinstance(change, Withdrawal):
                    trip_id, event = change.trip.id, WITHDRAWN
                    notifications = await self._withdrawn(conn, [change], now)
                else:
                    trip_id, event = change.after.id, change.event.value
                    changed = (change.after,)
                    audience = await self._dispatch.audience(conn, change, now)
                    notifications = for_transition(change, audience, self._offer_ttl)
                log.debug(
                    "command applied message_id=%s user_id=%s trip_id=%s event=%s",
                    command.id,
                    command.user_id,
                    trip_id,
                    event,
                )
            return await self._record(conn, kind, notifications, now, changed)

    async def _record(
        self,
        conn: Connection,
        kind: str,
        notifications: list[Notification],
        now: datetime,
        trips: tuple[Trip, ...] = (),
    ) -> Outcome:
        """Number the users' notifications into their logs and queue all for publishing,
        in the caller's transaction."""
        recorded = await notification_log.record(
            conn, notifications, now, exchange=self._topology.notifications_exchange
        )
        return Outcome(kind, recorded.outbox_ids, recorded.notifications, trips)

    async def _expire_requests(self) -> None:
        """Requests nobody accepted in time end as CANCELLED (no driver), told to the
        rider and the drivers as any cancel is. Due trips are found in the database,
        so a timeout that fell due while no worker ran fires when one starts."""
        while True:
            async with self._database.pool.acquire() as conn, conn.transaction():
                now = datetime.now(UTC)
                expired = await timeouts.expire_due(
                    conn, now, self._settings.request_timeout_seconds, EXPIRY_BATCH
                )
                notifications = []
                for transition in expired:
                    audience = await self._dispatch.audience(conn, transition, now)
                    notifications += for_transition(transition, audience, self._offer_ttl)
                outcome = await self._record(
                    conn, "expired", notifications, now, tuple(t.after for t in expired)
                )
            await self._publish(outcome)
            if len(expired) < EXPIRY_BATCH:
                return

    async def _end_lost_trips(self) -> None:
        """Trips under way whose driver is lost (gone from every gateway, and silent, for
        TAXI_DRIVER_LOST_SECONDS, or deactivated) end as CANCELLED (driver lost), told to
        the rider and the driver as any cancel is; the rider may request again at once."""
        while True:
            async with self._database.pool.acquire() as conn, conn.transaction():
                now = datetime.now(UTC)
                ended = await timeouts.end_lost(
                    conn, now, self._settings.driver_lost_seconds, LOST_BATCH
                )
                notifications = [
                    n
                    for transition in ended
                    for n in for_transition(transition, NOBODY, self._offer_ttl)
                ]
                outcome = await self._record(
                    conn, "driver_lost", notifications, now, tuple(t.after for t in ended)
                )
            await self._publish(outcome)
            if ended:
                log.info("trips ended, driver lost count=%d", len(ended))
            if len(ended) < LOST_BATCH:
                return

    async def _withdrawn(
        self, conn: Connection, withdrawals: list[Withdrawal], now: datetime
    ) -> list[Notification]:
        """Each withdrawn offer told to its driver, and the next ring of every trip whose
        last ring has now said no, in the caller's transaction."""
        told = [withdrawn(withdrawal, self._offer_ttl) for withdrawal in withdrawals]
        for trip, audience in await self._dispatch.after_withdrawals(conn, withdrawals, now):
            told += offers(trip, EventType.REQUESTED, audience, self._offer_ttl)
        return told

    async def _expire_offers(self) -> None:
        """Offers by name left unanswered for TAXI_OFFER_SECONDS are withdrawn from their
        drivers (reason "expired"); a ring that has now said no gives way to the next at
        once. Due offers are found in the database, whichever worker made them."""
        while True:
            async with self._database.pool.acquire() as conn, conn.transaction():
                now = datetime.now(UTC)
                expired = await repository.expire_offers(conn, now, OFFER_EXPIRY_BATCH)
                found = await repository.trips_by_id(conn, sorted({t for t, _ in expired}))
                withdrawals = [
                    offer_expired(found[trip_id], driver_id)
                    for trip_id, driver_id in expired
                    if trip_id in found
                ]
                notifications = await self._withdrawn(conn, withdrawals, now)
                outcome = await self._record(conn, "offers_expired", notifications, now)
            await self._publish(outcome)
            if len({trip_id for trip_id, _ in expired}) < OFFER_EXPIRY_BATCH:
                return

    async def _match_round(self) -> None:
        """The matched policy's round: waiting requests paired with free drivers, each
        offered to its driver alone. One worker a round (the others' rounds find the
        lock taken and do nothing); a worker that dies mid-round leaves its requests to
        the next round, whoever runs it."""
        async with self._database.pool.acquire() as conn, conn.transaction():
            now = datetime.now(UTC)
            paired = await self._dispatch.match_round(conn, now, MATCH_BATCH)
            outcome = await self._record_offers(conn, "matched", paired, now)
        await self._publish(outcome)

    async def _record_offers(
        self, conn: Connection, kind: str, offered: list[tuple[Trip, Audience]], now: datetime
    ) -> Outcome:
        """The offers of requests a sweep gave new drivers to, stored to go out."""
        notifications = [
            n
            for trip, audience in offered
            for n in offers(trip, EventType.REQUESTED, audience, self._offer_ttl)
        ]
        return await self._record(conn, kind, notifications, now)

    async def _widen_rings(self) -> None:
        """Requests nobody accepted within a ring's time are offered to the next
        nearest drivers, within twice the radius. Due rings are found in the database,
        so one that fell due while no worker ran fires when one starts."""
        while True:
            async with self._database.pool.acquire() as conn, conn.transaction():
                now = datetime.now(UTC)
                widened = await self._dispatch.widen_due(conn, now, WIDEN_BATCH)
                outcome = await self._record_offers(conn, "widened", widened, now)
            await self._publish(outcome)
            if len(widened) < WIDEN_BATCH:
                return

    async def _prune(self) -> None:
        removed = await retention.prune(
            self._database,
            datetime.now(UTC),
            self._settings.notification_retention_seconds,
        )
        if any(removed.values()):
            log.info("pruned %s", " ".join(f"{table}={count}" for table, count in removed.items()))

    async def _watch(self) -> None:
        """The metrics that are looked up rather than counted: whether this worker is
        ready, its database server, and what waits in the shared queues."""
        metrics.READY.set(1 if all((await self.readiness()).values()) else 0)
        await self._database_watch.check()
        await self._count_queued()

    async def _count_queued(self) -> None:
        """The depth of the command and dead-letter queues, by a passive declare (the
        broker's own metrics need its Prometheus plugin, which not every broker has)."""
        connection = self._connection
        if connection is None or not connection.connected.is_set():
            return
        try:
            if self._watch_channel is None:
                self._watch_channel = await connection.channel()
            channel = await self._watch_channel.get_underlay_channel()
            for label, queue in (
                ("commands", self._topology.dispatcher_queue),
                ("dead_letters", self._topology.dead_letter_queue),
            ):
                declared = await channel.queue_declare(queue, passive=True)
                metrics.QUEUE_MESSAGES.labels(label).set(declared.message_count or 0)
        except (AMQPError, OSError, TimeoutError) as exc:
            log.debug("queue depths not read error=%r", exc)

    async def _publish(self, outcome: Outcome) -> None:
        metrics.count_trips(outcome.trips)
        if not outcome.notifications:
            return
        assert self._publisher is not None
        try:
            await self._publisher.publish(outcome.notifications)
            self._published.add(outcome.outbox_ids)
        except Exception as exc:
            # Committed and stored: the relay publishes these rows once it can.
            log.warning(
                "notifications left to the outbox relay count=%d error=%r",
                len(outcome.outbox_ids),
                exc,
            )

    async def _give_back(
        self, message: AbstractIncomingMessage, command: Command, error: Exception
    ) -> None:
        """A failure the handler did not expect: retry a few times, then dead-letter."""
        deliveries = int(str((message.headers or {}).get("x-delivery-count") or 0)) + 1
        if deliveries >= MAX_DELIVERIES:
            metrics.COMMANDS.labels(command.type, "dead_lettered").inc()
            metrics.DEAD_LETTERED.inc()
            log.error(
                "dead-lettering message_id=%s type=%s after %d deliveries, last error=%r",
                command.id,
                command.type,
                deliveries,
                error,
            )
            await _settle(message.reject(requeue=False), command)
            await self._tell_dead_lettered(command)
        else:
            metrics.COMMANDS.labels(command.type, "failed").inc()
            log.warning(
                "command failed, requeued message_id=%s delivery=%d error=%r",
                command.id,
                deliveries,
                error,
                exc_info=deliveries == 1,
            )
            await _settle(message.nack(requeue=True), command)

    async def _tell_dead_lettered(self, command: Command) -> None:
        """The sender hears that their request was given up on, as any refusal: an
        error frame to their sockets open now, naming the request. If even that cannot
        be stored (the failure may be the database's), the log says so."""
        refusal = for_refusal(
            command.user_id,
            ErrorCode.INTERNAL,
            "the server could not apply this request after several attempts; it was not applied",
            command.type,
            command.request_id,
            command.trip_id,
        )
        try:
            async with self._database.pool.acquire() as conn, conn.transaction():
                outcome = await self._record(conn, "dead_lettered", [refusal], datetime.now(UTC))
        except Exception as exc:
            log.error(
                "could not tell user_id=%s of a dead-lettered command: %r", command.user_id, exc
            )
            return
        await self._publish(outcome)


def _lost_sweep_seconds(settings: Settings) -> float:
    """A lost driver's trip ends within a few seconds of falling due: a quarter of the
    lost-driver time, between a second and five. Each round reads only trips under way."""
    return min(5.0, max(1.0, settings.driver_lost_seconds / 4))


def _prune_interval(settings: Settings) -> float:
    """Often enough that the tables stay near their retention, rarely enough to cost
    nothing: a tenth of the retention, between a second and a minute."""
    return min(60.0, max(1.0, settings.notification_retention_seconds / 10))


async def _settle(settlement: Awaitable[None], command: Command) -> None:
    """Ack, nack or reject; if the channel is gone the broker redelivers, which is safe."""
    try:
        await settlement
    except (AMQPError, ConnectionError, RuntimeError) as exc:
        log.warning(
            "could not settle message_id=%s, it will be redelivered error=%r", command.id, exc
        )
