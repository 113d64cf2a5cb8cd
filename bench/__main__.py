"""`python -m bench` (`make bench`): load the system and measure it.

By default it starts the system itself (a fresh database and broker prefix on the
local Postgres and RabbitMQ, the gateway and N dispatcher workers), runs the
scenario and tears everything down; `--url` targets a running system instead.
Results go to `<out>/<scenario>.json` and `<out>/<scenario>.md`.

The city scenario (`bench.city`): 10,000 drivers reporting where they are, trips
at random points offered by distance, then by broadcast for comparison; riders on a
trip receive their driver's position (`driver.location`), timed from the report.

`city --policy rings|matched|both` (`bench.policies`): the city on a system started
with that TAXI_DISPATCH_POLICY, both side by side on the same drivers, demand and
seed, with drivers declining (`--decline-share`) and ignoring (`--ignore-share`)
offers, uniform demand or `--burst`: pick-up distance, time to assign, no_driver.

The servers scenario (`bench.servers`): the gateway's app under each server and
WebSocket implementation that could carry it (`bench.gateway_servers`), on the same
driver sockets, reports and echoes: CPU per frame, echo latency, memory per socket.

The hops scenario (`bench.hops`): what one crossing between processes costs (a
command and a notification through RabbitMQ, a statement's round trip to Postgres,
an event loop's wake-up), in each process it touches, at the rates of `--hop-rates`.

The cluster scenario (`bench.cluster`): steady traffic on one private RabbitMQ node
and on a three-node cluster in the same run, as ratios; then nodes killed under it.

`--compare-with REV` runs the scenario against this working tree and against REV
(a temporary git worktree) in the same run: steady and smoke alternate rounds
between the two systems (results in `<scenario>-compare.*`), idle measures REV
then this tree at each size (in `idle.*`). See `bench.compare` and `bench.idle`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import signal
import sys
import time
from pathlib import Path
from types import FrameType
from typing import Any

import psutil

from bench.city import city
from bench.city_report import city_compare_markdown, city_markdown
from bench.cluster import cluster
from bench.cluster_report import cluster_markdown
from bench.compare import compare_markdown, compare_traffic
from bench.gateway_servers import SERVERS
from bench.hops import hops, hops_markdown
from bench.idle import idle, idle_markdown
from bench.load import Load
from bench.policies import policies_markdown, run_policies
from bench.resources import ResourceMonitor, pids_named, rabbitmq_memory_mb, rabbitmq_pids
from bench.servers import servers, servers_markdown
from bench.stats import markdown_table, percentiles
from bench.system import LocalSystem

SCENARIOS: dict[str, dict[str, Any]] = {
    "steady": {"drivers": 200, "riders": 50, "rate": 20, "seconds": 60, "racers": 3},
    "saturation": {"drivers": 200, "riders": 50, "rate": 20, "seconds": 15, "racers": 3},
    "workers": {"drivers": 200, "riders": 50, "rate": 20, "seconds": 15, "racers": 3},
    "idle": {"connections": [5000, 20000], "rate": 0, "seconds": 60, "racers": 0},
    "smoke": {"drivers": 6, "riders": 3, "rate": 5, "seconds": 2, "racers": 2},
    # Riders, when not given: enough for a trip's length and ten seconds more of
    # requests (bench.city).
    "city": {"drivers": 10_000, "riders": None, "rate": 100, "seconds": 60, "racers": 2},
    # Steady's traffic, on one private RabbitMQ node and on a cluster of three (bench.cluster).
    "cluster": {"drivers": 200, "riders": 50, "rate": 20, "seconds": 60, "racers": 3},
    # The gateway's socket path under each server (bench.servers); no trips.
    "servers": {"drivers": 2000, "riders": 0, "rate": 0, "seconds": 30, "racers": 0},
    # One crossing between processes at a time (bench.hops): --seconds at each rate.
    "hops": {"seconds": 20},
}
SATURATION_STEPS = (20, 30, 40, 45, 48, 50, 52, 55, 60, 70, 80, 100)
OFFER_P99_LIMIT_MS = 100


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("scenario", choices=sorted(SCENARIOS))
    parser.add_argument("--url", help="a running gateway, e.g. http://127.0.0.1:8000")
    parser.add_argument("--workers", type=int, default=2, help="dispatcher workers to start")
    parser.add_argument("--drivers", type=int)
    parser.add_argument("--riders", type=int)
    parser.add_argument("--rate", type=float, help="trip requests per second")
    parser.add_argument("--seconds", type=float, help="how long to send requests")
    parser.add_argument("--racers", type=int, help="drivers racing to accept each trip (K)")
    parser.add_argument(
        "--connections",
        type=_sizes,
        help="idle: connected users per run, comma-separated (default 5000,20000)",
    )
    parser.add_argument(
        "--memory-samples",
        type=int,
        default=5,
        help="idle: broker memory samples per measurement, a second apart (median; default 5)",
    )
    parser.add_argument(
        "--compare-with",
        metavar="REV",
        help="also run the scenario against git revision REV, side by side (steady, smoke, idle)",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=4,
        help="rounds per system (--compare-with, cluster) or of every server (servers), "
        "alternating (default 4)",
    )
    city = parser.add_argument_group("city scenario")
    city.add_argument(
        "--baseline-seconds",
        type=float,
        default=10,
        help="city: seconds of location reports alone, before any trip (default 10)",
    )
    city.add_argument(
        "--quiet-seconds",
        type=float,
        default=0,
        help="city: seconds with every socket open and nothing sent, before the baseline, "
        "so that a report's cost is also given above what the idle city costs (default 0)",
    )
    city.add_argument(
        "--broadcast-rate",
        type=float,
        help="city: trips/s without a pick-up point, offered to every free driver "
        "(default: what keeps that near 2,000 offers/s, at most --rate)",
    )
    city.add_argument(
        "--broadcast-seconds",
        type=float,
        help="city: seconds of broadcast trips (default --seconds)",
    )
    city.add_argument(
        "--report-seconds",
        type=float,
        default=5,
        help="city: each driver reports its location this often (default 5)",
    )
    city.add_argument(
        "--trip-seconds",
        type=float,
        default=12,
        help="city: from accepted to completed, by the winning driver, who keeps "
        "reporting meanwhile: its rider gets its position (default 12)",
    )
    city.add_argument(
        "--drain-seconds",
        type=float,
        help="city: after the last request of a phase, how long its trips may take to end "
        "(default 30)",
    )
    city.add_argument(
        "--slack",
        type=float,
        default=1,
        help="city: the nearest-drivers check allows the dispatcher's picture of a driver "
        "(position, free or busy) to lag this many seconds behind what was sent (default 1)",
    )
    city.add_argument("--seed", type=int, default=1, help="city: the random seed (default 1)")
    city.add_argument(
        "--policy",
        choices=("rings", "matched", "both"),
        help="city: start the system with this TAXI_DISPATCH_POLICY (both: one run each, "
        "same drivers, demand and seed, side by side; see bench.policies). Default: the "
        "environment's, as before",
    )
    city.add_argument(
        "--decline-share",
        type=float,
        default=0.0,
        help="city: share of the offers a free driver declines (decline.trip; default 0)",
    )
    city.add_argument(
        "--ignore-share",
        type=float,
        default=0.0,
        help="city: share of the offers a free driver leaves to expire (default 0)",
    )
    city.add_argument(
        "--burst",
        type=int,
        default=1,
        help="city: requests sent in groups of this many at once, each group's pick-ups "
        "within --burst-radius of one point (default 1: uniform)",
    )
    city.add_argument(
        "--burst-radius",
        type=float,
        default=1500,
        help="city: metres around a burst's point its pick-ups fall within (default 1500)",
    )
    city.add_argument(
        "--profile",
        action="store_true",
        help="city: py-spy profiles of the gateway and a worker during the by-distance "
        "phase, in <out>/profiles/ (bench.profiles)",
    )
    city.add_argument(
        "--offer-seconds",
        type=int,
        default=5,
        help="city with --policy: TAXI_OFFER_SECONDS of the system started (default 5)",
    )
    city.add_argument(
        "--request-timeout",
        type=int,
        default=30,
        help="city with --policy: TAXI_REQUEST_TIMEOUT_SECONDS of the system started, so "
        "that no_driver happens within the run (default 30)",
    )
    on_cluster = parser.add_argument_group("cluster scenario (--rounds: rounds per system)")
    on_cluster.add_argument(
        "--gateways", type=int, default=2, help="cluster: gateways of each system (default 2)"
    )
    on_cluster.add_argument(
        "--kills",
        type=int,
        default=3,
        help="cluster: times the node gateway 1 is on is killed mid-traffic (default 3; 0: none)",
    )
    on_cluster.add_argument(
        "--database-kills",
        type=int,
        default=1,
        help="cluster: times the Postgres primary (Patroni, a synchronous standby beside it) "
        "is killed mid-traffic, after the nodes' kills (default 1; 0: none)",
    )
    on_cluster.add_argument(
        "--recovery-seconds",
        type=float,
        default=30,
        help="cluster: the window measured after each kill, and before it; the node is "
        "booted again at its end (default 30)",
    )
    on_cluster.add_argument(
        "--city-drivers",
        type=int,
        default=2000,
        help="cluster: drivers of the reduced city run on each (default 2000; 0: no city run)",
    )
    on_cluster.add_argument(
        "--city-rate",
        type=float,
        default=10,
        help="cluster: the city run's trips/s by distance (default 10)",
    )
    on_cluster.add_argument(
        "--city-seconds",
        type=float,
        default=30,
        help="cluster: the city run's seconds by distance, and by broadcast (default 30)",
    )
    on_servers = parser.add_argument_group("servers scenario (--rounds: rounds of every server)")
    on_servers.add_argument(
        "--servers",
        type=_server_names,
        default=list(SERVERS),
        help=f"servers: which to measure, comma-separated (default all: {','.join(SERVERS)})",
    )
    on_servers.add_argument(
        "--reports-per-second",
        type=_positive,
        default=2000,
        help="servers: location reports a second, from the drivers in turn (default 2000)",
    )
    on_servers.add_argument(
        "--echoes-per-second",
        type=float,
        default=100,
        help="servers: echo frames a second, each timed to its answer (default 100)",
    )
    on_hops = parser.add_argument_group("hops scenario")
    on_hops.add_argument(
        "--hop-rates",
        type=_rates,
        default=[50.0, 500.0],
        help="hops: crossings a second to measure each at, comma-separated (default 50,500)",
    )
    parser.add_argument("--out", type=Path, default=Path("bench-results"))
    args = parser.parse_args()
    if args.compare_with and args.scenario in ("saturation", "workers", "cluster", "servers"):
        parser.error("--compare-with applies to steady, smoke, idle and city")
    if args.compare_with and args.url:
        parser.error("--compare-with starts both systems itself: leave out --url")
    if args.policy and (args.url or args.compare_with or args.scenario != "city"):
        parser.error(
            "--policy starts the city's system itself: city only, no --url or --compare-with"
        )
    if args.url and args.scenario == "cluster":
        parser.error("cluster starts its RabbitMQ nodes and both systems itself: leave out --url")
    if args.url and args.scenario == "servers":
        parser.error("servers starts each server itself: leave out --url")
    if args.scenario == "hops" and (args.url or args.compare_with):
        parser.error("hops measures the local RabbitMQ and Postgres: no --url or --compare-with")
    for name, default in SCENARIOS[args.scenario].items():
        if getattr(args, name) is None:
            setattr(args, name, default)
    return args


def _server_names(raw: str) -> list[str]:
    names = [name.strip() for name in raw.split(",") if name.strip()]
    if not names:
        raise argparse.ArgumentTypeError(f"at least one of {', '.join(SERVERS)}")
    if unknown := [name for name in names if name not in SERVERS]:
        raise argparse.ArgumentTypeError(
            f"unknown server(s) {', '.join(unknown)}; choose from {', '.join(SERVERS)}"
        )
    return names


def _positive(raw: str) -> float:
    try:
        value = float(raw)
    except ValueError:
        raise argparse.ArgumentTypeError("a number") from None
    if not value > 0:
        raise argparse.ArgumentTypeError("above 0")
    return value


def _rates(raw: str) -> list[float]:
    try:
        rates = [float(part) for part in raw.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError("numbers, comma-separated") from None
    if not rates or min(rates) <= 0:
        raise argparse.ArgumentTypeError("at least one rate, each above 0")
    return rates


def _sizes(raw: str) -> list[int]:
    try:
        sizes = [int(part) for part in raw.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError("whole numbers, comma-separated") from None
    if not sizes or min(sizes) < 1:
        raise argparse.ArgumentTypeError("at least one size, each at least 1")
    return sizes


async def measure(
    args: argparse.Namespace, base_url: str, watched: dict[str, list[int]]
) -> dict[str, Any]:
    """One run at one rate: connect the users, send the requests, collect the figures."""
    load = Load(base_url, drivers=args.drivers, riders=args.riders, racers=args.racers)
    print(
        f"signing up and connecting {args.drivers} drivers and {args.riders} riders",
        file=sys.stderr,
    )
    await load.prepare()
    monitor = ResourceMonitor()
    for name, pids in {**watched, "load generator": [os.getpid()]}.items():
        monitor.watch(name, pids)
    monitor.start()
    started = time.perf_counter()
    try:
        await load.run(args.rate, args.seconds)
    finally:
        elapsed = time.perf_counter() - started
        processes = monitor.stop()
        await load.close()
    return summarise(args, load, elapsed, processes)


def summarise(
    args: argparse.Namespace, load: Load, elapsed: float, processes: dict[str, Any]
) -> dict[str, Any]:
    # A request the server refused (trip_in_progress: its rider's last trip was still
    # live) offers nothing to anyone: it counts as requested, not in the offer figures.
    refused = sum(1 for trip in load.trips.values() if trip.refused)
    trips = [trip for trip in load.trips.values() if not trip.refused]
    expected = sum(len(load.expected_offers(trip)) for trip in trips)
    received = sum(len(trip.offered_to & load.expected_offers(trip)) for trip in trips)
    offers_total = len(load.seen.offer_ms)
    completed = sum(1 for trip in trips if trip.completed_at is not None)
    return {
        "scenario": args.scenario,
        "parameters": {
            "drivers": args.drivers,
            "riders": args.riders,
            "rate": args.rate,
            "seconds": args.seconds,
            "racers": args.racers,
            "workers": None if args.url else args.workers,
        },
        "latency_ms": {
            "offer": percentiles([ms for _, ms in load.seen.offer_ms]),
            "notified": percentiles(load.seen.notified_ms),
            "assign": percentiles(load.seen.assign_ms),
            "full_trip": percentiles(load.seen.full_trip_ms),
        },
        "requests_per_second": {
            "offered": args.rate,
            "achieved": round(len(load.trips) / args.seconds, 2) if args.seconds else 0,
        },
        "offers": {
            "expected": expected,
            "received": received,
            "missing": expected - received,
            "delivered_per_second": round(offers_total / elapsed, 1) if elapsed else 0,
        },
        "trips": {"requested": len(load.trips), "completed": completed, "refused": refused},
        "double_assignments": sum(1 for trip in trips if len(trip.winners) > 1),
        "error_frames": dict(load.seen.errors),
        "lost_races": load.seen.lost_races,
        "socket_closes": load.seen.socket_closes,
        "processes": processes,
        "rabbitmq_memory_mb": rabbitmq_memory_mb(),
        "timeline": timeline(load),
        "machine": machine(),
    }


def timeline(load: Load) -> list[dict[str, Any]]:
    """Offer latency per second of the run, for the plot."""
    seconds: dict[int, list[float]] = {}
    for at, ms in load.seen.offer_ms:
        seconds.setdefault(int(at), []).append(ms)
    points: list[dict[str, Any]] = []
    for second, samples in sorted(seconds.items()):
        stats = percentiles(samples)
        points.append({"second": second, **{k: stats[k] for k in ("p50", "p90", "p99", "max")}})
    return points


def machine() -> dict[str, Any]:
    return {
        "cpus": psutil.cpu_count(),
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def held(result: dict[str, Any]) -> bool:
    offer = result["latency_ms"]["offer"]
    return (
        offer["p99"] is not None
        and offer["p99"] <= OFFER_P99_LIMIT_MS
        and result["offers"]["missing"] == 0
        and result["trips"]["completed"] == result["trips"]["requested"]
    )


async def run_scenario(args: argparse.Namespace) -> dict[str, Any]:
    if args.scenario == "saturation":
        return await saturation(args, args.workers)
    if args.scenario == "workers":
        runs = {}
        for workers in (1, 2, 4):
            runs[str(workers)] = await saturation(args, workers)
        return {"scenario": "workers", "by_workers": runs, "machine": machine()}
    if args.scenario == "idle":
        return await idle(args)
    if args.scenario == "city" and args.policy:
        return await run_policies(args)
    if args.scenario == "city":
        return await city(args)
    if args.scenario == "cluster":
        return await cluster(args, summarise)
    if args.scenario == "servers":
        return await servers(args)
    if args.scenario == "hops":
        return await hops(args)
    if args.compare_with:
        return await compare_traffic(
            args, summarise, lambda: {**broker_and_database(), "load generator": [os.getpid()]}
        )
    return await once(args, args.workers)


async def once(args: argparse.Namespace, workers: int) -> dict[str, Any]:
    if args.url:
        return await measure(args, args.url, broker_and_database())
    async with LocalSystem(workers=workers) as system:
        return await measure(args, system.base_url, {**system.pids(), **broker_and_database()})


async def saturation(args: argparse.Namespace, workers: int) -> dict[str, Any]:
    """Raise the rate step by step until offer p99 passes the limit or anything is missing."""
    steps = []
    best: dict[str, Any] | None = None
    for rate in SATURATION_STEPS:
        args.rate = rate
        print(f"saturation: {rate} requests/s with {workers} worker(s)", file=sys.stderr)
        result = await once(args, workers)
        steps.append(result)
        if not held(result):
            break
        best = result
    return {
        "scenario": f"saturation ({workers} workers)",
        "highest_rate_held": best["parameters"]["rate"] if best else None,
        "offers_per_second_held": best["offers"]["delivered_per_second"] if best else None,
        "limit": f"offer p99 <= {OFFER_P99_LIMIT_MS} ms and no missing offer",
        "steps": steps,
        "machine": machine(),
    }


def broker_and_database() -> dict[str, list[int]]:
    return {"rabbitmq": rabbitmq_pids(), "postgres": pids_named("postgres")}


def results_name(args: argparse.Namespace) -> str:
    """`steady`, or `steady-compare` for a side-by-side run (idle holds both either way)."""
    if args.compare_with and args.scenario != "idle":
        return f"{args.scenario}-compare"
    if args.scenario == "city" and args.policy == "both":
        return "city-policies" + ("-burst" if args.burst > 1 else "")
    return str(args.scenario)


def write(result: dict[str, Any], out: Path, scenario: str) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{scenario}.json").write_text(json.dumps(result, indent=2))
    if "failover" in result:
        (out / f"{scenario}.md").write_text(cluster_markdown(result))
        return
    if "policies" in result:
        (out / f"{scenario}.md").write_text(policies_markdown(result))
        return
    if "compare" in result:
        (out / f"{scenario}.md").write_text(compare_markdown(result))
        return
    if "servers_runs" in result:
        (out / f"{scenario}.md").write_text(servers_markdown(result))
        return
    if "hops" in result:
        (out / f"{scenario}.md").write_text(hops_markdown(result))
        return
    if "runs" in result:
        (out / f"{scenario}.md").write_text(idle_markdown(result))
        return
    if "city_compare" in result:
        (out / f"{scenario}.md").write_text(city_compare_markdown(result))
        return
    if "phases" in result:
        (out / f"{scenario}.md").write_text(city_markdown(result))
        return
    tables = [markdown_table(step) for step in result.get("steps", [])] if "steps" in result else []
    if "by_workers" in result:
        tables = [
            f"## {workers} worker(s): highest rate held {run['highest_rate_held']} requests/s, "
            f"{run['offers_per_second_held']} offers/s\n\n"
            + "\n".join(markdown_table(step) for step in run["steps"])
            for workers, run in result["by_workers"].items()
        ]
    elif "latency_ms" in result:
        tables = [markdown_table(result)]
    (out / f"{scenario}.md").write_text("\n".join(tables))
    if scenario == "steady" and "timeline" in result:
        from bench.plot import plot_timeline

        plot_timeline(result, out / "steady-latency.png")


def stop_as_on_ctrl_c(signum: int, frame: FrameType | None) -> None:
    """SIGTERM (a supervisor, a test's time running out) stops a run as Ctrl-C does:
    the running scenario is cancelled and what it started is stopped and removed (its
    gateways and workers, their databases and broker objects, private RabbitMQ nodes
    with their epmd and data)."""
    signal.raise_signal(signal.SIGINT)


def main() -> None:
    args = parse_args()
    signal.signal(signal.SIGTERM, stop_as_on_ctrl_c)
    try:
        result = asyncio.run(run_scenario(args))
    except KeyboardInterrupt:
        sys.exit("bench: interrupted; what it started is stopped and removed")
    name = results_name(args)
    write(result, args.out, name)
    print((args.out / f"{name}.md").read_text())
    print(f"results: {args.out / (name + '.json')}")


if __name__ == "__main__":
    main()
