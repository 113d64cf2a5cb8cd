"""The system on a three-node RabbitMQ cluster against the same system on one node, and
what a node's loss costs (`python -m bench cluster`).

Four private RabbitMQ nodes of `tools.local_cluster` on this machine, removed with
their data at the end: one alone, and three clustered with `join_cluster`. Nothing
is asked of the machine's own broker. Two systems run at once, each with its own
database and broker prefix, the same number of gateways and workers, and their own
users and sockets (spread over the gateways): one whose TAXI_AMQP_URL names the lone
node, one whose TAXI_AMQP_URL names the three (each process lists them from another
node, so the gateways start on nodes 1 and 2 and the workers on the others).

1. Side by side: the steady scenario's traffic (`bench.load`: open-loop trip
   requests without a pick-up point, offered to every free driver, the first K of
   them racing) alternates between the two in rounds (O C C O ...), `--seconds` per
   system in all. Offer and assign latency and the server's CPU per trip (gateways,
   workers, the RabbitMQ node or nodes, this system's Postgres backends) for each,
   and their ratios, cluster / one node.
2. Failover, on the cluster: steady traffic goes on while the node that gateway 1
   is connected to is killed with SIGKILL, `--kills` times; `--recovery-seconds`
   after each kill the node is booted again and rejoins. Then the database primary
   is killed the same way, `--database-kills` times: the cluster side's Postgres is
   `tools.local_postgres` (Patroni on a private etcd, a primary and a synchronous
   standby, both named in TAXI_DATABASE_URL), which promotes the standby; the old
   primary rejoins as its standby before the next kill. For each kill: the gap
   (from the kill to the first offer, and to the first assignment, of a trip
   requested after it by a user of a gateway that was on the killed node), the
   offer and assign p99 of the recovery window against the same length before the
   kill, and at the end, from Postgres, lost trips and double assignments.

The simulated clients behave as the runbook asks an app to (docs/operations.md,
"The broker is down"): every command carries a `request_id`, and one refused with
`service_unavailable` is sent again with the same id. Offers are transient and a
gateway's offers queue goes with its node: a trip nobody was offered within
`OFFER_PATIENCE_SECONDS` is found in the open trips (`GET /api/trip/?status=REQUESTED`,
as a driver's app refreshes its list) and accepted from there.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import contextlib
import gc
import itertools
import os
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import replace
from functools import partial
from typing import Any
from unittest import mock

import asyncpg
import httpx
import orjson
import psutil
import websockets

from bench.client import SUBPROTOCOLS
from bench.compare import alternate_rounds, merge_usage
from bench.load import DRAIN_SECONDS, Load, Trip, User
from bench.stats import percentiles
from bench.system import LocalSystem
from shared.migrate import migrate, with_database
from tools.local_cluster import LocalCluster
from tools.local_postgres import PostgresCluster
from tools.private_servers import wait_until
from tools.processes import ServiceProcess, dispatcher_process, gateway_process, gateway_url

SIDES = ("one node", "cluster")
NODES = 3
# A command refused with service_unavailable is sent again this long after.
RESEND_SECONDS = 0.5
# A trip with no offer this long after its rider heard of it is looked for in the
# open trips, as a driver's app that refreshes its list would.
OFFER_PATIENCE_SECONDS = 5.0
SERVER_PROCESSES = ("gateway", "dispatcher", "rabbitmq", "postgres backends")


# --- the clients ------------------------------------------------------------------


class ClusterLoad(Load):
    """The steady scenario's load, its users spread over several gateways, sending
    each command with a request id and again when refused as unavailable."""

    def __init__(self, base_urls: list[str], *, drivers: int, riders: int, racers: int) -> None:
        super().__init__(base_urls[0], drivers=drivers, riders=riders, racers=racers)
        self.base_urls = base_urls
        self.gateway_of: dict[int, int] = {}  # user id -> index of its gateway
        self.rider_of: dict[str, User] = {}  # trip label -> its rider
        self.sent: dict[str, tuple[User, dict[str, Any]]] = {}  # request id -> frame
        self.offers: list[tuple[float, int, Trip]] = []  # (at, driver's gateway, trip)
        self.unavailable = 0
        self.resends = 0
        self.taken_from_list = 0
        self._resends: set[asyncio.Task[None]] = set()

    async def connect(self) -> None:
        """As `Load.connect`, user n of each kind on gateway n modulo their number."""
        for group in (self.drivers, self.riders):
            for user in group:
                gateway = user.index % len(self.base_urls)
                self.gateway_of[user.id] = gateway
                user.ws = await websockets.connect(
                    f"{self.base_urls[gateway].replace('http', 'ws', 1)}/taxi/?token={user.token}",
                    max_size=2**20,
                    compression=None,
                    open_timeout=30,
                    subprotocols=SUBPROTOCOLS,
                )
        for driver in self.drivers:
            self.idle.add(driver.index)
            self.left_idle_at[driver.index] = []
            self._readers.append(asyncio.create_task(self._read(driver, self._on_driver_frame)))
        for rider in self.riders:
            self._readers.append(asyncio.create_task(self._read(rider, self._on_rider_frame)))

    async def close(self) -> None:
        for task in self._resends:
            task.cancel()
        await super().close()

    async def run_until(self, rate: float, stop: asyncio.Event) -> None:
        """`Load.run`, open loop at `rate` until `stop` is set, then until every trip
        ends (at most DRAIN_SECONDS more)."""
        self._scheduled = False
        self._drained = asyncio.Event()
        gc.collect()
        gc.freeze()
        start = time.perf_counter()
        reporter = asyncio.create_task(self._report(start))
        riders = itertools.cycle(self.riders)
        for number in itertools.count():
            if stop.is_set():
                break
            delay = start + number / rate - time.perf_counter()
            if delay > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), delay)
                if stop.is_set():
                    break
            await self._request(self._free_rider(riders), self._sent)
            self._sent += 1
        self._scheduled = True
        self._check_drained()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._drained.wait(), DRAIN_SECONDS)
        reporter.cancel()

    async def _request(self, rider: User, number: int) -> None:
        self.rider_of[f"bench {self.run_id} {number}"] = rider
        await super()._request(rider, number)

    async def _send(self, user: User, frame: dict[str, Any]) -> None:
        if frame.get("type") in ("create.trip", "update.trip") and "request_id" not in frame:
            frame = {**frame, "request_id": uuid.uuid4().hex}
            self.sent[frame["request_id"]] = (user, frame)
        await super()._send(user, frame)

    def _unavailable(self, frame: dict[str, Any]) -> bool:
        """An error frame saying the command was not passed on: send it again."""
        if frame.get("type") != "error" or frame["data"].get("code") != "service_unavailable":
            return False
        self.unavailable += 1
        sent = self.sent.get(frame["data"].get("request_id") or "")
        if sent is not None:
            task = asyncio.create_task(self._resend(*sent))
            self._resends.add(task)
            task.add_done_callback(self._resends.discard)
        return True

    async def _resend(self, user: User, frame: dict[str, Any]) -> None:
        await asyncio.sleep(RESEND_SECONDS)
        self.resends += 1
        await super()._send(user, frame)

    async def _on_driver_frame(self, driver: User, frame: dict[str, Any], now: float) -> None:
        if self._unavailable(frame):
            return
        if frame.get("type") == "trip.requested":
            trip = self._trip_of(frame)
            if trip is not None and driver.index not in trip.offered_to:
                self.offers.append((now, self.gateway_of[driver.id], trip))
        await super()._on_driver_frame(driver, frame, now)

    async def _on_rider_frame(self, rider: User, frame: dict[str, Any], now: float) -> None:
        if self._unavailable(frame):
            return
        if frame.get("type") == "error" and frame["data"].get("code") == "trip_in_progress":
            # The refused request, by its request id (`Load` takes the newest one).
            sent = self.sent.get(frame["data"].get("request_id") or "")
            trip = self.trips.get(sent[1]["data"]["pick_up_address"]) if sent else None
            if trip is not None and trip.id is None and not trip.refused:
                self.seen.errors["trip_in_progress"] += 1
                trip.refused = True
                if trip in rider.live:
                    rider.live.remove(trip)
                self._refused += 1
                self._check_drained()
                return
        await super()._on_rider_frame(rider, frame, now)

    async def take_unoffered(self, stop: asyncio.Event) -> None:
        """Once a second: a trip its rider heard of, offered to nobody for a while, is
        looked up in the open trips by a driver and accepted by a free driver."""
        async with httpx.AsyncClient(timeout=10) as http:
            while not stop.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), 1)
                now = time.perf_counter()
                waiting = [
                    trip
                    for trip in self.trips.values()
                    if trip.id is not None
                    and not trip.refused
                    and trip.racers == 0
                    and trip.completed_at is None
                    and now - (trip.notified_at or trip.sent_at) > OFFER_PATIENCE_SECONDS
                ]
                if not waiting or not self.idle:
                    continue
                looker = self.drivers[0]
                with contextlib.suppress(httpx.HTTPError, ValueError):
                    listed = await http.get(
                        f"{self.base_urls[-1]}/api/trip/",
                        params={"status": "REQUESTED", "limit": 100},
                        headers={"Authorization": f"Bearer {looker.token}"},
                    )
                    if listed.status_code != 200:
                        continue
                    open_ids = {str(trip["id"]) for trip in listed.json()}
                    for trip in waiting:
                        if trip.id not in open_ids or not self.idle:
                            continue
                        driver = self.drivers[min(self.idle)]
                        trip.racers += 1
                        trip.first_accept_at = trip.first_accept_at or time.perf_counter()
                        self._leave_idle(driver.index, time.perf_counter())
                        self.taken_from_list += 1
                        assert trip.id is not None
                        await self._send(
                            driver,
                            {
                                "type": "update.trip",
                                "data": {"id": trip.id, "status": "STARTED"},
                            },
                        )


# --- the systems ------------------------------------------------------------------


class BrokerSystem(LocalSystem):
    """`LocalSystem` on the given RabbitMQ nodes, with several gateways: process n
    lists the nodes from node n on (round the end)."""

    def __init__(
        self,
        urls: list[str],
        gateways: int,
        workers: int,
        label: str,
        database_server: str | None = None,
    ) -> None:
        super().__init__(workers, label=label)
        self.node_urls = urls
        self.gateways = gateways
        self.settings = replace(self.settings, amqp_url=",".join(urls))
        if database_server is not None:  # its own database there, same name
            url = with_database(database_server, self.settings.database_name)
            self.settings = replace(self.settings, database_url=url)
        self.base_urls: list[str] = []

    def _listing_from(self, n: int) -> Any:
        n %= len(self.node_urls)
        return replace(self.settings, amqp_url=",".join(self.node_urls[n:] + self.node_urls[:n]))

    async def _start(self) -> None:
        await asyncio.to_thread(migrate, self.settings.database_url)
        for n in range(self.gateways):
            gateway = gateway_process(self._listing_from(n), self.logs)
            await self._started(gateway)
            self.base_urls.append(gateway_url(gateway))
        self.base_url = self.base_urls[0]
        for n in range(self.workers):
            await self._started(
                dispatcher_process(
                    self._listing_from(self.gateways + n),
                    self.logs / f"dispatcher-{n}.log",
                    "--concurrency",
                    str(self.concurrency),
                )
            )

    @property
    def gateway_processes(self) -> list[ServiceProcess]:
        return self.processes[: self.gateways]

    def pids(self) -> dict[str, list[int]]:
        named = {
            f"gateway-{n + 1}": [process.pid] for n, process in enumerate(self.gateway_processes)
        }
        for n, worker in enumerate(self.processes[self.gateways :]):
            named[f"dispatcher-{n}"] = [worker.pid]
        return named


def node_of(pid: int, ports: list[int]) -> int | None:
    """The node (index into `ports`, their AMQP ports) process `pid` is connected to."""
    with contextlib.suppress(psutil.Error):
        for conn in psutil.Process(pid).net_connections(kind="tcp"):
            if conn.raddr and conn.status == psutil.CONN_ESTABLISHED and conn.raddr.port in ports:
                return ports.index(conn.raddr.port)
    return None


# --- the scenario -----------------------------------------------------------------


async def cluster(
    args: argparse.Namespace,
    summarise: Callable[[argparse.Namespace, Load, float, dict[str, Any]], dict[str, Any]],
) -> dict[str, Any]:
    """`summarise(args, load, elapsed, processes)` is the steady scenario's summary."""
    rounds = max(1, args.rounds)
    per_round = args.seconds / rounds
    alone, three = LocalCluster(1), LocalCluster(NODES)
    postgres = PostgresCluster()
    async with contextlib.AsyncExitStack() as stack:
        print(
            "starting one RabbitMQ node alone and a cluster of three"
            f" (data in {alone.base} and {three.base})",
            file=sys.stderr,
            flush=True,
        )
        print(
            f"and a Postgres primary with a synchronous standby (Patroni, in {postgres.base})",
            file=sys.stderr,
            flush=True,
        )
        stack.callback(postgres.remove)
        stack.callback(three.remove)
        stack.callback(alone.remove)
        booted = time.monotonic()
        with concurrent.futures.ThreadPoolExecutor(3) as pool:
            await asyncio.gather(
                *(
                    asyncio.wrap_future(pool.submit(server.start))
                    for server in (alone, three, postgres)
                )
            )
        boot_seconds = round(time.monotonic() - booted, 1)
        print(f"  nodes up and clustered in {boot_seconds}s", file=sys.stderr)
        brokers = {"one node": alone, "cluster": three}
        steady = await _steady_and_failover(args, brokers, postgres, rounds, per_round, summarise)
        cities = await _cities(args, brokers) if args.city_drivers else None
    return {**steady, "city": cities, "nodes_boot_seconds": boot_seconds}


async def _steady_and_failover(
    args: argparse.Namespace,
    brokers: dict[str, LocalCluster],
    postgres: PostgresCluster,
    rounds: int,
    per_round: float,
    summarise: Callable[[argparse.Namespace, Load, float, dict[str, Any]], dict[str, Any]],
) -> dict[str, Any]:
    three = brokers["cluster"]
    async with contextlib.AsyncExitStack() as stack:
        systems: dict[str, BrokerSystem] = {}
        loads: dict[str, ClusterLoad] = {}
        for side in SIDES:
            system = BrokerSystem(
                brokers[side].urls,
                args.gateways,
                args.workers,
                side,
                postgres.url("postgres") if side == "cluster" else None,
            )
            await stack.enter_async_context(system)
            systems[side] = system
        for side in SIDES:
            print(
                f"{side}: signing up and connecting {args.drivers} drivers and "
                f"{args.riders} riders over {args.gateways} gateway(s)",
                file=sys.stderr,
            )
            load = ClusterLoad(
                systems[side].base_urls,
                drivers=args.drivers,
                riders=args.riders,
                racers=args.racers,
            )
            await load.prepare()
            stack.push_async_callback(load.close)
            loads[side] = load
        backends = {side: await systems[side].database_pids() for side in SIDES}
        broker_pids = {
            side: [pid for node in brokers[side].nodes if (pid := node.pid) is not None]
            for side in SIDES
        }
        elapsed, usage, order = await alternate_rounds(
            loads,
            SIDES,
            rounds,
            per_round,
            args.rate,
            lambda side: {
                **systems[side].pids(),
                "rabbitmq": broker_pids[side],
                "postgres backends of this system": backends[side],
            },
            lambda side: side,
        )
        results: dict[str, dict[str, Any]] = {}
        for side in SIDES:
            result = summarise(args, loads[side], elapsed[side], merge_usage(usage[side]))
            result["scenario"] = f"steady traffic, {side}"
            result["parameters"]["gateways"] = args.gateways
            result["rabbitmq_memory_mb"] = None  # the machine's broker is not in this
            result["server_cpu_ms_per_trip"] = cpu_per_trip(result)
            result["resends"] = loads[side].resends
            results[side] = result
        failover = await run_failover(args, three, systems["cluster"], loads["cluster"], postgres)
    return {
        "scenario": "cluster",
        "parameters": {
            "drivers": args.drivers,
            "riders": args.riders,
            "rate": args.rate,
            "seconds_per_system": args.seconds,
            "rounds": rounds,
            "seconds_per_round": per_round,
            "racers": args.racers,
            "gateways": args.gateways,
            "workers": args.workers,
            "kills": args.kills,
            "database_kills": args.database_kills,
            "recovery_seconds": args.recovery_seconds,
        },
        "order": order,
        "one_node": results["one node"],
        "cluster": results["cluster"],
        "ratios": ratios(results["one node"], results["cluster"]),
        "failover": failover,
        "machine": results["cluster"]["machine"],
    }


async def _cities(args: argparse.Namespace, brokers: dict[str, LocalCluster]) -> dict[str, Any]:
    """The city scenario (`bench.city`, as it is), reduced, on one node and then on the
    cluster: its own system each time (one gateway, `--workers` workers), its
    TAXI_AMQP_URL naming the node or nodes, its broker's CPU that of those nodes."""
    from bench import city as city_scenario

    runs: dict[str, Any] = {}
    for side in SIDES:
        urls = brokers[side].urls
        pids = [pid for node in brokers[side].nodes if (pid := node.pid) is not None]
        city_args = argparse.Namespace(**vars(args))
        city_args.scenario = "city"
        city_args.drivers = args.city_drivers
        city_args.rate = args.city_rate
        city_args.seconds = args.city_seconds
        city_args.broadcast_seconds = args.city_seconds
        city_args.riders = None
        city_args.racers = 2
        city_args.url = None
        print(
            f"city on {side}: {args.city_drivers} drivers, {args.city_rate} trips/s",
            file=sys.stderr,
            flush=True,
        )
        configured = os.environ.get("TAXI_AMQP_URL")
        os.environ["TAXI_AMQP_URL"] = ",".join(urls)  # what LocalSystem starts on
        try:
            with (
                mock.patch.object(city_scenario, "rabbitmq_pids", lambda pids=pids: pids),
                mock.patch.object(city_scenario, "rabbitmq_memory_mb", lambda: None),
            ):
                result = await city_scenario.city(city_args)
        except (Exception, SystemExit) as exc:  # the steady figures stand without it
            print(f"city on {side} failed: {exc!r}", file=sys.stderr)
            runs[side] = {"error": repr(exc)}
            continue
        finally:
            if configured is None:
                os.environ.pop("TAXI_AMQP_URL", None)
            else:
                os.environ["TAXI_AMQP_URL"] = configured
        runs[side] = {"parameters": result["parameters"], "phases": result["phases"]}
    figures = {side: city_figures(run) for side, run in runs.items()}
    return {
        "runs": runs,
        "figures": figures,
        "ratios": {
            phase: {
                name: _ratio(
                    figures["cluster"].get(phase, {}).get(name),
                    figures["one node"].get(phase, {}).get(name),
                )
                for name in CITY_FIGURES
            }
            for phase in CITY_PHASES
        },
    }


CITY_PHASES = ("by distance", "broadcast")
CITY_FIGURES = (
    "first_offer_p50",
    "first_offer_p99",
    "every_offer_p99",
    "assign_p99",
    "server_cpu_ms_per_trip",
)


def city_figures(run: dict[str, Any]) -> dict[str, dict[str, float | None]]:
    figures: dict[str, dict[str, float | None]] = {}
    for phase in CITY_PHASES:
        found = run.get("phases", {}).get(phase)
        if found is None:
            continue
        latency = found["latency_ms"]
        figures[phase] = {
            "first_offer_p50": latency["first_offer"]["p50"],
            "first_offer_p99": latency["first_offer"]["p99"],
            "every_offer_p99": latency["every_offer"]["p99"],
            "assign_p99": latency["assign"]["p99"],
            "server_cpu_ms_per_trip": found.get("server_cpu_ms_per_trip"),
            "trips": found["trips"]["requested"],
            "lost": found["trips"]["lost"],
            "double_assignments": found["double_assignments"],
        }
    return figures


def cpu_per_trip(result: dict[str, Any]) -> float | None:
    """Server CPU milliseconds per trip requested (refused ones included: each was a
    command through the whole system)."""
    trips = int(result["trips"]["requested"])
    if not trips:
        return None
    cpu = sum(
        float(usage["cpu_seconds"])
        for name, usage in result["processes"].items()
        if name.startswith(SERVER_PROCESSES)
    )
    return round(1000 * cpu / trips, 2)


def _ratio(cluster_value: float | None, one_value: float | None) -> float | None:
    if cluster_value is None or not one_value:
        return None
    return round(cluster_value / one_value, 2)


def ratios(one: dict[str, Any], three: dict[str, Any]) -> dict[str, float | None]:
    """Cluster / one node."""
    figures: dict[str, Callable[[dict[str, Any]], float | None]] = {
        "offer_p50": lambda r: r["latency_ms"]["offer"]["p50"],
        "offer_p99": lambda r: r["latency_ms"]["offer"]["p99"],
        "assign_p50": lambda r: r["latency_ms"]["assign"]["p50"],
        "assign_p99": lambda r: r["latency_ms"]["assign"]["p99"],
        "server_cpu_ms_per_trip": lambda r: r["server_cpu_ms_per_trip"],
        "rabbitmq_cpu_ms_per_trip": lambda r: process_ms_per_trip(r, "rabbitmq"),
    }
    return {name: _ratio(figure(three), figure(one)) for name, figure in figures.items()}


def process_ms_per_trip(result: dict[str, Any], prefix: str) -> float | None:
    trips = int(result["trips"]["requested"])
    cpu = sum(
        float(u["cpu_seconds"]) for n, u in result["processes"].items() if n.startswith(prefix)
    )
    return round(1000 * cpu / trips, 2) if trips else None


# --- failover ---------------------------------------------------------------------


async def run_failover(
    args: argparse.Namespace,
    nodes: LocalCluster,
    system: BrokerSystem,
    load: ClusterLoad,
    postgres: PostgresCluster,
) -> dict[str, Any]:
    """Steady traffic on the cluster while the node gateway 1 is on is killed, and
    booted again `recovery_seconds` later, `kills` times; then the database primary,
    `database_kills` times, each time once the old one is back as the standby."""
    if args.kills < 1 and args.database_kills < 1:
        return {"kills": [], "database_kills": []}
    ports = [node.port for node in nodes.nodes]
    first_trip = len(load.trips)
    stop = asyncio.Event()
    traffic = asyncio.create_task(load.run_until(args.rate, stop))
    picker_stop = asyncio.Event()
    picker = asyncio.create_task(load.take_unoffered(picker_stop))
    kills: list[dict[str, Any]] = []
    database_kills: list[dict[str, Any]] = []
    window = args.recovery_seconds
    try:
        await asyncio.sleep(window)  # the window before the first kill
        for number in range(args.kills):
            on_node = {name: node_of(pids[0], ports) for name, pids in system.pids().items()}
            victim = on_node["gateway-1"]
            if victim is None:
                raise RuntimeError(f"gateway 1 is on no node of the cluster: {on_node}")
            print(
                f"failover {number + 1}/{args.kills}: kill -9 node {victim + 1}, which "
                f"holds {sorted(n for n, at in on_node.items() if at == victim)}",
                file=sys.stderr,
                flush=True,
            )
            killed_at = time.perf_counter()
            await asyncio.to_thread(nodes.kill, victim)
            await asyncio.sleep(window)
            affected = sorted(
                int(name.split("-")[1]) - 1
                for name, at in on_node.items()
                if at == victim and name.startswith("gateway")
            )
            kills.append(
                {
                    "node": victim + 1,
                    "processes_on_it": sorted(n for n, at in on_node.items() if at == victim),
                    "killed_at": killed_at,
                    "affected_gateways": affected,
                }
            )
            print(f"  booting node {victim + 1} again", file=sys.stderr, flush=True)
            rebooted = time.monotonic()
            await asyncio.to_thread(nodes.restart, victim)
            kills[-1]["node_back_after_seconds"] = round(time.monotonic() - rebooted + window, 1)
            # The window before the next kill; after the last, a few seconds on the nodes
            # all back.
            await asyncio.sleep(window if number + 1 < args.kills else min(window, 5))
        if args.kills and args.database_kills:
            await asyncio.sleep(window)  # a whole window before the database's kill
        for number in range(args.database_kills):
            database_kills.append(await kill_database_primary(postgres, system, window))
            print(
                f"  old primary back as the synchronous standby after "
                f"{database_kills[-1]['standby_again_after_seconds']}s",
                file=sys.stderr,
                flush=True,
            )
            await asyncio.sleep(window if number + 1 < args.database_kills else min(window, 5))
    finally:
        stop.set()
        with contextlib.suppress(Exception):
            await traffic
        picker_stop.set()
        with contextlib.suppress(Exception):
            await picker
    trips = list(load.trips.values())[first_trip:]
    for kill in kills + database_kills:
        kill.update(measure_kill(load, kill, window))
        del kill["killed_at"]
    checked = await check_trips(system, load, trips)
    return {
        "kills": kills,
        "database_kills": database_kills,
        "trips": checked,
        "double_assignments": sum(1 for trip in trips if len(trip.winners) > 1),
        "offers_missing": _missing_offers(load, trips),
        "commands_refused_unavailable": load.unavailable,
        "commands_sent_again": load.resends,
        "trips_taken_from_the_open_list": load.taken_from_list,
        "error_frames": dict(load.seen.errors),
        "socket_closes": load.seen.socket_closes,
        "gaps_seconds": {
            "offer_max": _max(k["gap_seconds"]["offer_on_affected_gateway"] for k in kills),
            "assign_max": _max(k["gap_seconds"]["assign_on_affected_gateway"] for k in kills),
        },
    }


async def kill_database_primary(
    postgres: PostgresCluster, system: BrokerSystem, window: float
) -> dict[str, Any]:
    """kill -9 the Postgres primary (postmaster and backends); measure for `window`
    seconds; then wait until the old primary follows the promoted standby."""
    print("database failover: kill -9 the Postgres primary", file=sys.stderr, flush=True)
    killed_at = time.perf_counter()
    started = time.monotonic()
    old = await asyncio.to_thread(postgres.kill_primary)
    await asyncio.sleep(window)
    new = postgres.primary()
    if new is None or new == old:
        raise RuntimeError(f"Patroni promoted no standby within {window}s: {postgres.members()}")
    await asyncio.to_thread(
        wait_until, partial(postgres.standby_of, new), "the old primary back as a standby"
    )
    return {
        "node": f"postgres {old + 1}",
        "processes_on_it": ["every gateway and worker"],
        "killed_at": killed_at,
        "affected_gateways": list(range(system.gateways)),
        "promoted": f"postgres {new + 1}",
        "standby_again_after_seconds": round(time.monotonic() - started, 1),
    }


def _max(values: Any) -> float | None:
    present = [v for v in values if v is not None]
    return max(present) if present else None


def measure_kill(load: ClusterLoad, kill: dict[str, Any], window: float) -> dict[str, Any]:
    """The gap and the latency of the window after one kill against the one before."""
    at = kill["killed_at"]
    affected = set(kill["affected_gateways"])
    after_kill = [
        (when, gateway, trip)
        for when, gateway, trip in load.offers
        if when >= at and trip.sent_at >= at
    ]

    def first(times: list[float]) -> float | None:
        return round(min(times) - at, 2) if times else None

    def rider_gateway(trip: Trip) -> int:
        return load.gateway_of[load.rider_of[trip.label].id]

    assigned = [
        trip for trip in load.trips.values() if trip.sent_at >= at and trip.assigned_at is not None
    ]
    gaps = {
        "offer_anywhere": first([when for when, _, _ in after_kill]),
        "offer_on_affected_gateway": first(
            [
                when
                for when, gateway, trip in after_kill
                if gateway in affected and rider_gateway(trip) in affected
            ]
        ),
        "assign_anywhere": first([trip.assigned_at for trip in assigned if trip.assigned_at]),
        "assign_on_affected_gateway": first(
            [
                trip.assigned_at
                for trip in assigned
                if trip.assigned_at and rider_gateway(trip) in affected
            ]
        ),
    }
    windows = {"before": (at - window, at), "recovery": (at, at + window)}
    latency: dict[str, Any] = {}
    for name, (start, end) in windows.items():
        offers = [
            (when - trip.sent_at) * 1000 for when, _, trip in load.offers if start <= when < end
        ]
        assigns = [
            (trip.assigned_at - trip.first_accept_at) * 1000
            for trip in load.trips.values()
            if trip.assigned_at is not None
            and trip.first_accept_at is not None
            and start <= trip.assigned_at < end
        ]
        requested = [trip for trip in load.trips.values() if start <= trip.sent_at < end]
        latency[name] = {
            "offer_ms": percentiles(offers),
            "assign_ms": percentiles(assigns),
            "trips_requested": len(requested),
            "trips_completed": sum(1 for trip in requested if trip.completed_at is not None),
        }
    return {"gap_seconds": gaps, "windows": latency}


def _missing_offers(load: Load, trips: list[Trip]) -> int:
    live = [trip for trip in trips if not trip.refused]
    return sum(len(load.expected_offers(trip) - trip.offered_to) for trip in live)


async def check_trips(system: BrokerSystem, load: ClusterLoad, trips: list[Trip]) -> dict[str, Any]:
    """What Postgres holds of the failover's trips: each request one trip, completed;
    each trip accepted once."""
    labels = [trip.label for trip in trips]
    connection = await asyncpg.connect(system.settings.database_url)
    try:
        rows = await connection.fetch(
            "SELECT pick_up_address, status, count(*) OVER (PARTITION BY pick_up_address) AS n"
            " FROM trips WHERE pick_up_address = ANY($1::text[])",
            labels,
        )
        accepted = await connection.fetch(
            "SELECT body FROM notifications WHERE frame_type = 'trip.accepted'"
            " AND user_id = ANY($1::bigint[])",
            [rider.id for rider in load.riders],
        )
    finally:
        await connection.close()
    status = {row["pick_up_address"]: row["status"] for row in rows}
    refused = {trip.label for trip in trips if trip.refused}
    # Lost: a request the system took (its rider was told, or it is stored) that did not
    # end completed; or one never answered at all.
    lost = [label for label in labels if label not in refused and status.get(label) != "COMPLETED"]
    ids = {trip.id for trip in trips if trip.id is not None}
    per_trip = Counter(
        trip_id for row in accepted if (trip_id := orjson.loads(row["body"])["data"]["id"]) in ids
    )
    return {
        "requested": len(trips),
        "refused_trip_in_progress": len(refused),
        "completed": sum(1 for label in labels if status.get(label) == "COMPLETED"),
        "stored": len(status),
        "lost": len(lost),
        "lost_examples": [{"label": label, "status": status.get(label)} for label in lost[:10]],
        "requests_stored_twice": sum(1 for row in rows if row["n"] > 1),
        "accepted_more_than_once": sum(1 for n in per_trip.values() if n > 1),
    }
