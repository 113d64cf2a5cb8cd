"""Dispatch policies side by side in the city scenario (PROTOCOL D2; issue 22, "Measure
it"): `make bench SCENARIO=city BENCH_ARGS="--policy both"`.

With `--policy rings|matched|both` the city runs once per policy on a system started
with `TAXI_DISPATCH_POLICY` set, `TAXI_OFFER_SECONDS` at `--offer-seconds` and
`TAXI_REQUEST_TIMEOUT_SECONDS` at `--request-timeout` (so that a request nobody takes
ends `no_driver` within the run), on the same drivers, demand and seed: the drivers'
starting points and routes come from the seed, the pick-up points and send times from
a random generator of their own (`Demand`), and whether a driver accepts, declines or
ignores an offer from a hash of the seed, the trip's number and the driver
(`Answers`), so both policies meet the same riders and the same choosy drivers.

Drivers: of the offers a free driver would take, `--decline-share` are declined
(`decline.trip` at once) and `--ignore-share` left unanswered (the offer expires after
`TAXI_OFFER_SECONDS`); the driver stays free meanwhile. Demand: `--rate` requests a
second at random points of the square, or with `--burst K` in groups of K sent at
once, every K / rate seconds, each group's pick-ups within `--burst-radius` metres of
one random point: requests there outnumber the free drivers near them.

Figures of the by-distance phase (`dispatch_figures`, also in every city result):
- pick-up distance of the assigned driver: straight line from the winner's last
  report sent by the time its `trip.accepted` arrived to the pick-up point (the
  generator's record), mean and p95; and the `distance_m` its offer carried;
- time to assign: request sent -> the rider's `trip.accepted`, p50 / p95 / p99;
- the share of requests ending `no_driver`, and the decisions the drivers took;
- server CPU per trip (the phase's, from `bench.city`).
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import random
import sys
import zlib
from collections import Counter
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from bench.stats import percentiles

if TYPE_CHECKING:
    from bench.city_model import Area, CityTrip, Phase
    from bench.city_traffic import City

POLICIES = ("rings", "matched")
ACCEPT, DECLINE, IGNORE = "accept", "decline", "ignore"
# A burst's centre stays this far inside the square's edge.
BURST_MARGIN_M = 2000.0
# The goal of issue 22, under competing demand.
GOAL_SHORTER_SHARE = 0.15


class Answers:
    """What a driver does with an offer: the same for a trip and a driver in every run
    with the same seed, whatever the policy or the order offers arrive in."""

    def __init__(self, seed: int, decline_share: float, ignore_share: float) -> None:
        self.seed = seed
        self.decline_share = decline_share
        self.ignore_share = ignore_share
        self.taken: Counter[str] = Counter()

    def answer(self, trip: CityTrip, driver: int) -> str:
        if not self.decline_share and not self.ignore_share:
            return ACCEPT
        number = trip.key.split("-", 1)[1]  # "<phase index>-<request number>"
        draw = zlib.crc32(f"{self.seed}:{number}:{driver}".encode()) / 2**32
        if draw < self.decline_share:
            choice = DECLINE
        elif draw < self.decline_share + self.ignore_share:
            choice = IGNORE
        else:
            choice = ACCEPT
        self.taken[choice] += 1
        return choice


class Demand:
    """When each request of a phase leaves and where it is picked up: uniform over the
    square, or in bursts around a random point; from a generator of its own."""

    def __init__(self, area: Area, seed: int, burst: int, burst_radius_m: float) -> None:
        self.area = area
        self.rng = random.Random(f"{seed}-demand")
        self.burst = max(1, burst)
        self.burst_radius_m = burst_radius_m
        self._centre: tuple[float, float] = (0.0, 0.0)

    def offset(self, number: int, rate: float) -> float:
        """Seconds from the phase's start to the request's departure."""
        if self.burst == 1:
            return number / rate
        return (number // self.burst) * self.burst / rate

    def pick_up_xy(self, number: int) -> tuple[float, float]:
        if self.burst == 1:
            return self.area.random_xy(self.rng)
        if number % self.burst == 0:
            half = self.area.half - BURST_MARGIN_M
            self._centre = (self.rng.uniform(-half, half), self.rng.uniform(-half, half))
        # Uniform over the disc.
        reach = self.burst_radius_m * math.sqrt(self.rng.random())
        angle = self.rng.uniform(0, 2 * math.pi)
        return self._centre[0] + reach * math.cos(angle), self._centre[1] + reach * math.sin(angle)


def mean(values: list[float]) -> float | None:
    return round(sum(values) / len(values), 1) if values else None


def p95(values: list[float]) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[max(0, math.ceil(0.95 * len(ordered)) - 1)], 1)


def dispatch_figures(run: City, phase: Phase) -> dict[str, Any]:
    """Pick-up distance of the assigned driver, time to assign, no_driver share."""
    from bench.city_model import haversine

    at_acceptance: list[float] = []
    at_offer: list[float] = []
    to_assign: list[float] = []
    for trip in phase.trips:
        if trip.assigned_at is not None:
            to_assign.append((trip.assigned_at - trip.sent_at) * 1000)
        if len(trip.winners) != 1 or trip.pick_up is None:
            continue
        (winner,) = trip.winners
        if winner in trip.distance_m:
            at_offer.append(trip.distance_m[winner])
        position = run.fleet.latest(winner, trip.driver_accepted_at[winner])
        if position is not None:
            at_acceptance.append(haversine(*trip.pick_up, *position))
    requested = len(phase.trips)
    no_driver = sum(1 for t in phase.trips if t.outcome == "cancelled (no_driver)")
    stats = percentiles(to_assign)
    return {
        "pick_up_m": {
            "count": len(at_acceptance),
            "mean": mean(at_acceptance),
            "p95": p95(at_acceptance),
            "offered_mean": mean(at_offer),
            "offered_p95": p95(at_offer),
        },
        "time_to_assign_ms": {
            "count": stats["count"],
            "p50": stats["p50"],
            "p95": p95(to_assign),
            "p99": stats["p99"],
            "max": stats["max"],
        },
        "assigned": len(to_assign),
        "no_driver": no_driver,
        "no_driver_share": round(no_driver / requested, 4) if requested else None,
        "driver_answers": dict(run.answers.taken),
        "withdrawn": {
            reason: n
            for reason in ("declined", "expired")
            if (n := phase.frames.get(f"withdrawn {reason}", 0))
        },
    }


DISPATCH_ROWS = (
    "**pick-up distance m** (winner at acceptance) mean / p95 (offered: mean / p95)",
    "**time to assign ms** (request -> rider's trip.accepted) p50 / p95 / p99",
    "requests ending no_driver",
    "drivers' answers; offers withdrawn",
)


def dispatch_rows(phase: dict[str, Any]) -> list[tuple[str, str]]:
    """The figures as (measure, value) rows, for `bench.city_report.city_markdown`."""
    d = phase["dispatch"]
    pick, wait = d["pick_up_m"], d["time_to_assign_ms"]
    cells = (
        f"{pick['mean']} / {pick['p95']} ({pick['offered_mean']} / {pick['offered_p95']})",
        f"{wait['p50']} / {wait['p95']} / {wait['p99']}",
        f"{d['no_driver']} ({100 * (d['no_driver_share'] or 0):.1f}%)",
        f"{_counts(d['driver_answers'])}; {_counts(d['withdrawn'])}",
    )
    return list(zip(DISPATCH_ROWS, cells, strict=True))


def _counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(counts.items())) or "-"


# --- running each policy ---------------------------------------------------------


@contextlib.contextmanager
def server_env(values: dict[str, str]) -> Iterator[None]:
    """The environment LocalSystem takes its Settings from, for one run."""
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


async def run_policies(args: argparse.Namespace) -> dict[str, Any]:
    """The city once per policy of `--policy`, same drivers, demand and seed."""
    from bench.city import city

    names = POLICIES if args.policy == "both" else (args.policy,)
    if args.broadcast_seconds is None:
        args.broadcast_seconds = 0  # the comparison is of dispatch by distance
    if args.drain_seconds is None:
        args.drain_seconds = args.request_timeout + 15.0
    runs: dict[str, Any] = {}
    for name in names:
        print(f"city, dispatch policy {name}", file=sys.stderr, flush=True)
        env = {
            "TAXI_DISPATCH_POLICY": name,
            "TAXI_OFFER_SECONDS": str(args.offer_seconds),
            "TAXI_REQUEST_TIMEOUT_SECONDS": str(args.request_timeout),
        }
        with server_env(env):
            runs[name] = await city(args)
        runs[name]["parameters"]["server"]["env"] = env
    if len(runs) == 1:
        single: dict[str, Any] = runs[names[0]]
        return single
    return {"scenario": "city", "policies": runs, "comparison": compare(args, runs)}


def _near(run: dict[str, Any]) -> dict[str, Any]:
    phase: dict[str, Any] = run["phases"]["by distance"]
    return phase


def compare(args: argparse.Namespace, runs: dict[str, Any]) -> dict[str, Any]:
    """The goal of issue 22: matched's mean pick-up at least 15% shorter than rings',
    with matched's time to assign p50 at most TAXI_MATCH_SECONDS + rings' p50."""
    rings, matched = _near(runs["rings"])["dispatch"], _near(runs["matched"])["dispatch"]
    match_ms = 1000 * float(os.environ.get("TAXI_MATCH_SECONDS") or 2)
    r_mean, m_mean = rings["pick_up_m"]["mean"], matched["pick_up_m"]["mean"]
    r_p50, m_p50 = rings["time_to_assign_ms"]["p50"], matched["time_to_assign_ms"]["p50"]
    shorter = round(1 - m_mean / r_mean, 4) if r_mean and m_mean is not None else None
    limit = round(r_p50 + match_ms, 1) if r_p50 is not None else None
    return {
        "load": f"bursts of {args.burst}" if args.burst > 1 else "uniform",
        "matched_pick_up_shorter_share": shorter,
        "pick_up_goal_met": None if shorter is None else shorter >= GOAL_SHORTER_SHARE,
        "time_to_assign_limit_ms": limit,
        "time_to_assign_goal_met": None if limit is None or m_p50 is None else m_p50 <= limit,
    }


def policies_markdown(result: dict[str, Any]) -> str:
    from bench.city_report import city_markdown

    runs = result["policies"]
    names = list(runs)
    first = runs[names[0]]["parameters"]
    c = result["comparison"]
    lines = [
        "### city: dispatch policies side by side",
        "",
        f"{first['drivers']:,} drivers, {first['riders']:,} riders, {first['rate']:g} "
        f"requests/s for {first['seconds']:g} s ({c['load']}), seed {first['seed']}; "
        f"server env {first['server'].get('env', {})}.",
        "",
        "| measure | " + " | ".join(names) + " |",
        "|---|" + "---|" * len(names),
    ]
    per_policy = {name: dict(dispatch_rows(_near(runs[name]))) for name in names}
    for measure in per_policy[names[0]]:
        lines.append(f"| {measure} | " + " | ".join(per_policy[n][measure] for n in names) + " |")
    for label, key in (
        ("trips requested", lambda p: p["trips"]["requested"]),
        (
            "outcomes",
            lambda p: ", ".join(f"{k}: {v}" for k, v in sorted(p["trips"]["outcomes"].items())),
        ),
        (
            "server CPU ms per trip (above the baseline)",
            lambda p: (
                f"{p['server_cpu_ms_per_trip']} ({p['server_cpu_ms_per_trip_above_baseline']})"
            ),
        ),
        ("machine CPU busy %", lambda p: p["machine_cpu_busy_percent"]),
    ):
        lines.append(f"| {label} | " + " | ".join(str(key(_near(runs[n]))) for n in names) + " |")
    lines += [
        "",
        f"matched's mean pick-up shorter than rings' by {c['matched_pick_up_shorter_share']} "
        f"(goal >= {GOAL_SHORTER_SHARE}: {c['pick_up_goal_met']}); matched's time to assign "
        f"p50 within rings' p50 + TAXI_MATCH_SECONDS = {c['time_to_assign_limit_ms']} ms: "
        f"{c['time_to_assign_goal_met']}.",
    ]
    for name in names:
        lines += ["", f"## {name}", "", city_markdown(runs[name])]
    return "\n".join(lines) + "\n"
