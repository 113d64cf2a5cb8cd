"""The city scenario (`make bench SCENARIO=city`): dispatch by distance at city scale,
side by side with the broadcast it replaces.

`--drivers` drivers (default 10,000) move through a 30 x 30 km square around a city
centre at city speeds (random waypoints, 4 to 14 m/s), each reporting where it is
every `--report-seconds` (5), staggered evenly. Riders (`--riders`, default ten
seconds' worth of requests) request trips open-loop at random points of the square.
Every socket is a bare `bench.client.IdleSocket` that hands its messages to this
module, so one process holds them all; the generator reports its own CPU and how
late its event loop ran (a 50 ms tick) beside the figures, so a busy generator
cannot pass for a slow server.

The run, on one driver population (with `--quiet-seconds`, first a **quiet** phase:
every socket open and nothing sent, what the city costs doing nothing, so that a
report's own cost is also given above it), after every driver has reported once:

1. **baseline**: locations only, no trips (`--baseline-seconds`): what the reports
   cost, so the trips' own cost can be told from it.
2. **by distance**: `--rate` trips/s for `--seconds`, each with a `pick_up` point.
3. **broadcast**: the same trips without `pick_up` (offered to every free driver) at
   `--broadcast-rate` (by default what keeps the fan-out near 2,000 offers/s, the
   order of what one gateway held in the saturation scenario: broadcast cannot keep
   up with 100 trips/s to 10,000 drivers) for `--broadcast-seconds`.

Each phase waits until its every trip has an outcome (or `--drain-seconds`). An offer
is taken by the first `--racers` free drivers who see it (the rest are told it was
taken); the winner moves it STARTED -> IN_PROGRESS -> COMPLETED over `--trip-seconds`
(12 by default: two or three reports) and is free again. Drivers report all along,
on a trip too, and the trip's rider receives each of those reports as
`driver.location` (PROTOCOL C3, "Live tracking").

Measured per phase: offer latency (request sent -> first offer of the trip, and the
same for every offer), assign latency (first accept sent -> the rider's
`trip.accepted`, as in `bench.load`), offers per trip in the first ring, double
assignments, lost trips (no outcome), CPU of every process; once, the gateway's RSS
per connection.

The nearest-drivers check: for each first-ring offer (received within half of
TAXI_DISPATCH_WIDEN_SECONDS of the trip's first offer), from the generator's own
record of what every driver reported and when it was free, the driver's rank among
the free drivers with a fresh location at request time. Reports in flight make the
server's picture differ from the generator's by a report or so, so the rank counts
only competitors that are surely nearer (by every position the server may have had
for either driver: the last one sent over `--slack` seconds before the request and
any sent until the offer arrived) and surely free (no change from `--slack` seconds
before the request until the ring's last offer arrived). It must be at most
TAXI_DISPATCH_MAX_OFFERS. Beside it: the strict rank (latest positions only, free at
that instant), and which of its driver's reports each offer's `distance_m` matches:
how much older it was than the driver's latest report before the request, and how
often a newer one had been sent over `--slack` before the request (the dispatcher's
picture lagging that far).

Live tracking, per phase: every `driver.location` a rider receives is matched, by
trip and position, to the report of the trip's driver it carries (the latest one
with that position sent before it arrived). Location-to-rider latency runs from the
generator sending that `update.location` to the rider receiving it, for the reports
sent once the driver had its `trip.accepted`; the one the gateway sends when the
trip is accepted (the driver's position then, reported earlier) is counted apart.
As correctness figures: frames for a trip that is not the rider's, or whose position
is no report of the trip's driver, or that arrive after the rider's `trip.completed`
(or `trip.cancelled`), all of which must be 0; and, for information, the reports
sent while under way (from the driver's `trip.accepted` until it sent COMPLETED)
that never reached the rider.

Also per phase: the whole machine's CPU and any other process busy meanwhile (this
machine is shared), the generator's GC pauses; from the baseline, the CPU one
location report costs each process. A request the gateway answers with
service_unavailable is sent again with the same request_id (backing off). With
`--profile`, py-spy samples the gateway and a worker during the by-distance phase
(`bench.profiles`).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import os
import sys
from pathlib import Path
from typing import Any

import psutil

from bench.city_model import BROADCAST_OFFERS_PER_SECOND, SETTLE_SECONDS, SPARE_FILES
from bench.city_report import city_machine, city_result
from bench.city_traffic import City
from bench.client import raise_open_files_limit
from bench.profiles import Profiles
from bench.resources import pids_named, rabbitmq_pids
from bench.revision import Worktree, this_tree_label
from bench.system import LocalSystem
from shared.settings import Settings

# --- the run -----------------------------------------------------------------


async def city(args: argparse.Namespace) -> dict[str, Any]:
    if args.riders is None:
        # Each rider is busy for a trip's length and the wait for a driver.
        args.riders = max(20, int(args.rate * (args.trip_seconds + 10)))
    if args.broadcast_rate is None:
        args.broadcast_rate = round(
            min(args.rate, BROADCAST_OFFERS_PER_SECOND / max(1, args.drivers)), 3
        )
    if args.broadcast_seconds is None:
        args.broadcast_seconds = args.seconds
    if args.drain_seconds is None:
        args.drain_seconds = 30.0
    users = args.drivers + args.riders
    limit = raise_open_files_limit(users + SPARE_FILES)
    if limit < users + SPARE_FILES:
        raise SystemExit(
            f"{users} sockets need an open-files limit above {users + SPARE_FILES}; "
            f"this process has {limit} and may not raise it"
        )
    if args.url:
        return await _run(args, args.url, None, None)
    if args.compare_with:
        return await _compare(args)
    return await _on_local_system(args)


async def _on_local_system(
    args: argparse.Namespace, code: Path | None = None, label: str = "this tree"
) -> dict[str, Any]:
    async with LocalSystem(workers=args.workers, code=code, label=label) as system:
        result = await _run(args, system.base_url, system, system.settings)
    result["setup"]["queues_left_after_clean_up"] = system.queues_left
    return result


async def _compare(args: argparse.Namespace) -> dict[str, Any]:
    """The same city (drivers, demand, seed) on REV, then on this tree, in one run, one
    system at a time (a city is most of what the machine holds): the figures that
    travel between machines are the CPU per trip and per report."""
    with Worktree(args.compare_with) as worktree:
        assert worktree.path is not None
        print(f"city, before ({worktree.label})", file=sys.stderr)
        before = await _on_local_system(args, worktree.path, worktree.label)
        labels = {"before": worktree.label, "after": this_tree_label()}
    print(f"city, after ({labels['after']})", file=sys.stderr)
    after = await _on_local_system(args)
    return {
        "scenario": "city",
        "city_compare": {"labels": labels, "before": before, "after": after},
        "machine": city_machine(),
    }


async def _run(
    args: argparse.Namespace, base_url: str, system: LocalSystem | None, settings: Settings | None
) -> dict[str, Any]:
    run = City(args, base_url, settings or _configured())
    gateway = system.pids()["gateway"] if system else None
    print(f"signing up {args.drivers} drivers and {args.riders} riders", file=sys.stderr)
    signed_up_in = await run.sign_up()
    await asyncio.sleep(SETTLE_SECONDS)
    rss_before = _rss(gateway) if gateway else None
    print(f"  signed up in {signed_up_in:.0f}s; connecting", file=sys.stderr, flush=True)
    try:
        opened, failed, connect_seconds = await run.connect()
        print(
            f"  {opened} sockets open in {connect_seconds:.0f}s ({failed} failed)",
            file=sys.stderr,
            flush=True,
        )
        if not any(run.driver_sockets) or not any(run.rider_sockets):
            where = f" (logs: {system.logs})" if system else ""
            raise SystemExit(f"the gateway opened no driver's or no rider's socket{where}")
        gc.collect()
        gc.freeze()  # what exists now lives for the run: keep the collector off it
        watched = await _watched(system)
        run.watch()
        if args.quiet_seconds > 0:
            # Every socket open and nothing sent: what the city costs doing nothing,
            # which the baseline's reports are then also counted above.
            await run.run_phase("quiet", False, 0, args.quiet_seconds, watched)
            run.between_phases()  # the first reports are not quiet's
        run.start_reports()
        # Every driver reports once before any trip (one without a location would get
        # every trip by broadcast), and the last reports get a second to arrive.
        await asyncio.wait_for(run.reported_once.wait(), args.report_seconds * 3 + 10)
        await asyncio.sleep(1)
        rss_connected = _rss(system.pids()["gateway"]) if system else None
        await run.run_phase("baseline", False, 0, args.baseline_seconds, watched)
        profiles = None
        if args.profile and system is not None:
            profiles = Profiles(args.out / "profiles", system.label, args.seconds)
            await profiles.start(system.pids())
        await run.run_phase("by distance", True, args.rate, args.seconds, watched)
        if profiles is not None:
            for name, path in (await profiles.finish()).items():
                print(f"  profile of {name}: {path}", file=sys.stderr)
        if args.broadcast_seconds > 0:
            await run.run_phase(
                "broadcast", False, args.broadcast_rate, args.broadcast_seconds, watched
            )
        # Trips of an earlier phase may still be going: give them the same time.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(run.all_ended.wait(), args.drain_seconds)
    finally:
        await run.close()
    return city_result(
        args, run, signed_up_in, opened, failed, connect_seconds, rss_before, rss_connected
    )


def _rss(pids: list[int]) -> int:
    """The gateway's resident memory: with several gateway processes, all of theirs
    (their supervisor's included, which is small)."""
    return sum(psutil.Process(pid).memory_info().rss for pid in pids)


def _configured() -> Settings | None:
    try:
        return Settings.from_env()
    except ValueError:
        return None


async def _watched(system: LocalSystem | None) -> dict[str, list[int]]:
    """The processes to measure (asked off the event loop: rabbitmqctl takes a second)."""
    watched: dict[str, list[int]] = {}
    if system is not None:
        watched.update(system.pids())
    watched["rabbitmq"] = await asyncio.to_thread(rabbitmq_pids)
    if system is not None:
        watched["postgres (this system)"] = await system.database_pids()
    else:  # with --url: every Postgres process of the machine
        watched["postgres (all)"] = await asyncio.to_thread(pids_named, "postgres")
    watched["load generator"] = [os.getpid()]
    return watched
