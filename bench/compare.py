"""Traffic side by side: the same scenario against this working tree and another
revision (`--compare-with REV`) in one run.

Both systems run at once, each with its own database (migrated by its own
revision's migrations), broker prefix, gateway and workers, and its own users and
sockets. The load alternates between them in rounds, before/after then
after/before (B A A B B A ...), so whatever the machine does meanwhile (other
processes, the broker's and Postgres's own housekeeping) falls on both alike.
Each system gets `--seconds` of traffic in all, `--rounds` rounds of
`seconds / rounds`; its figures are taken over all its rounds.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import asyncpg

from bench.load import Load
from bench.resources import ResourceMonitor
from bench.revision import Worktree, this_tree_label
from bench.stats import markdown_table
from bench.system import LocalSystem

SIDES = ("before", "after")


async def compare_traffic(
    args: argparse.Namespace,
    summarise: Callable[[argparse.Namespace, Load, float, dict[str, Any]], dict[str, Any]],
    shared_pids: Callable[[], dict[str, list[int]]],
) -> dict[str, Any]:
    """`summarise(args, load, elapsed, processes)` is the single run's summary;
    `shared_pids()` the processes both systems use (the broker, Postgres), asked once
    both are up, so that their database connections are counted."""
    rounds = max(1, args.rounds)
    per_round = args.seconds / rounds
    with Worktree(args.compare_with) as worktree:
        assert worktree.path is not None
        labels = {"before": worktree.label, "after": this_tree_label()}
        async with contextlib.AsyncExitStack() as stack:
            systems = {
                "before": await stack.enter_async_context(
                    LocalSystem(args.workers, code=worktree.path, label=labels["before"])
                ),
                "after": await stack.enter_async_context(
                    LocalSystem(args.workers, label=labels["after"])
                ),
            }
            loads: dict[str, Load] = {}
            for side, system in systems.items():
                print(
                    f"{side} ({labels[side]}): signing up and connecting {args.drivers} "
                    f"drivers and {args.riders} riders",
                    file=sys.stderr,
                )
                load = Load(
                    system.base_url, drivers=args.drivers, riders=args.riders, racers=args.racers
                )
                await load.prepare()
                stack.push_async_callback(load.close)
                loads[side] = load
            shared = shared_pids()
            # Postgres work each system causes: the backends of its own database.
            backends = {side: await systems[side].database_pids() for side in SIDES}
            elapsed, usage, order = await alternate_rounds(
                loads,
                SIDES,
                rounds,
                per_round,
                args.rate,
                lambda side: {
                    **systems[side].pids(),
                    **shared,
                    "postgres backends of this system": backends[side],
                },
                lambda side: f"{side} ({labels[side]})",
            )
            results = {}
            for side in SIDES:
                result = summarise(args, loads[side], elapsed[side], merge_usage(usage[side]))
                result["scenario"] = f"{args.scenario}, {side}: {labels[side]}"
                result["revision"] = labels[side]
                result["notifications_stored"] = await stored_notifications(systems[side])
                results[side] = result
    return {
        "scenario": args.scenario,
        "compare": {
            "before": {"revision": labels["before"], "commit": worktree.commit},
            "after": {"revision": labels["after"]},
            "rounds": rounds,
            "seconds_per_round": per_round,
            "order": order,
        },
        "before": results["before"],
        "after": results["after"],
        "difference_ms": {
            name: {
                key: _minus(results["after"]["latency_ms"][name][key], stats[key])
                for key in ("p50", "p90", "p99", "max")
            }
            for name, stats in results["before"]["latency_ms"].items()
        },
    }


def _minus(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else round(a - b, 2)


def merge_usage(rounds: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """CPU over all of a system's rounds; the highest peak RSS of any."""
    seconds = sum(r["seconds"] for r in rounds) or 1e-9
    merged: dict[str, dict[str, Any]] = {}
    for name in rounds[0]["processes"]:
        cpu = sum(r["processes"][name]["cpu_seconds"] for r in rounds)
        merged[name] = {
            "cpu_seconds": round(cpu, 2),
            "cpu_percent": round(100 * cpu / seconds, 1),
            "peak_rss_mb": max(r["processes"][name]["peak_rss_mb"] for r in rounds),
        }
    return merged


async def stored_notifications(system: LocalSystem) -> int | None:
    """Rows of the notification log, where the revision keeps one (None elsewhere)."""
    connection = await asyncpg.connect(system.settings.database_url)
    try:
        return int(await connection.fetchval("SELECT count(*) FROM notifications"))
    except asyncpg.UndefinedTableError:
        return None
    finally:
        await connection.close()


def compare_markdown(result: dict[str, Any]) -> str:
    before, after = result["before"], result["after"]
    spec = result["compare"]
    params = after["parameters"]
    lines = [
        f"### {result['scenario']}, side by side: {spec['before']['revision']} (before) and "
        f"{spec['after']['revision']} (after)",
        "",
        f"{params['drivers']} drivers, {params['riders']} riders, {params['rate']} requests/s, "
        f"K={params['racers']}, {params['workers']} workers each; {spec['rounds']} rounds of "
        f"{spec['seconds_per_round']:g} s per system, in the order "
        f"{' '.join(side[0].upper() for side in spec['order'])} (B = before, A = after).",
        "",
        "| latency (ms) | before p50 | before p99 | after p50 | after p99 "
        "| p50 after - before | p99 after - before |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, stats in before["latency_ms"].items():
        other = after["latency_ms"][name]
        diff = result["difference_ms"][name]
        lines.append(
            f"| {name} | {stats['p50']} | {stats['p99']} | {other['p50']} | {other['p99']} "
            f"| {_signed(diff['p50'])} | {_signed(diff['p99'])} |"
        )

    def cpu(side: dict[str, Any], name: str) -> float | str:
        """CPU seconds of the process named so, or of all dispatcher-<n>."""
        usage = side["processes"].items()
        matching = [u for n, u in usage if n == name or n.startswith(f"{name}-")]
        return round(sum(float(u["cpu_seconds"]) for u in matching), 1) if matching else "-"

    rows = [
        ("trips refused (trip_in_progress)", *(s["trips"]["refused"] for s in (before, after))),
        (
            "trips completed",
            *(f"{s['trips']['completed']} of {s['trips']['requested']}" for s in (before, after)),
        ),
        ("offers missing", before["offers"]["missing"], after["offers"]["missing"]),
        ("double assignments", before["double_assignments"], after["double_assignments"]),
        ("error frames", *(sum(s["error_frames"].values()) for s in (before, after))),
        ("socket closes", before["socket_closes"], after["socket_closes"]),
        (
            "notifications stored in Postgres",
            *(
                "none (no log)" if s["notifications_stored"] is None else s["notifications_stored"]
                for s in (before, after)
            ),
        ),
        ("gateway CPU seconds", cpu(before, "gateway"), cpu(after, "gateway")),
        (
            "dispatcher CPU seconds (all workers)",
            cpu(before, "dispatcher"),
            cpu(after, "dispatcher"),
        ),
        (
            "Postgres CPU seconds, this system's backends",
            cpu(before, "postgres backends of this system"),
            cpu(after, "postgres backends of this system"),
        ),
        (
            "Postgres CPU seconds, every process (other databases too)",
            cpu(before, "postgres"),
            cpu(after, "postgres"),
        ),
        ("RabbitMQ CPU seconds", cpu(before, "rabbitmq"), cpu(after, "rabbitmq")),
    ]
    # CPU in seconds over the same traffic: a system whose rounds waited longer for
    # their last trips would show a lower percentage for the same work.
    lines += ["", "| measure | before | after |", "|---|---|---|"]
    lines += [f"| {name} | {b} | {a} |" for name, b, a in rows]
    return "\n".join(lines) + "\n\n" + markdown_table(before) + "\n" + markdown_table(after)


def _signed(value: float | None) -> str:
    return "-" if value is None else f"{value:+.2f}"


async def alternate_rounds(
    loads: Mapping[str, Load],
    sides: Sequence[str],
    rounds: int,
    per_round: float,
    rate: float,
    watched: Callable[[str], Mapping[str, list[int]]],
    label: Callable[[str], str],
) -> tuple[dict[str, float], dict[str, list[dict[str, Any]]], list[str]]:
    """Run each side's load for `rounds` rounds of `per_round` seconds, alternating the
    order every round (a b b a a b ...), so drift over the run weighs on both sides
    alike; watch each side's processes (`watched`) while its load runs. Return the
    seconds each side ran, its per-round process usage, and the order of the rounds."""
    elapsed = dict.fromkeys(sides, 0.0)
    usage: dict[str, list[dict[str, Any]]] = {side: [] for side in sides}
    order: list[str] = []
    for number in range(rounds):
        for side in sides if number % 2 == 0 else sides[::-1]:
            print(
                f"round {number + 1}/{rounds}: {label(side)}, {rate} requests/s for {per_round:g}s",
                file=sys.stderr,
            )
            monitor = ResourceMonitor()
            for name, pids in watched(side).items():
                monitor.watch(name, pids)
            monitor.start()
            started = time.perf_counter()
            try:
                await loads[side].run(rate, per_round)
            finally:
                took = time.perf_counter() - started
                elapsed[side] += took
                usage[side].append({"seconds": took, "processes": monitor.stop()})
            order.append(side)
    return elapsed, usage, order
