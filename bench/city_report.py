"""The city scenario's results: per phase and in all, the targets, and the report
(`bench.city`)."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from functools import partial
from typing import Any

import psutil

from bench.city_model import (
    ASSIGN_P99_LIMIT_MS,
    CENTRE,
    DISTANCE_TOLERANCE_M,
    KB_PER_CONNECTION_LIMIT,
    LOCATION_P99_LIMIT_MS,
    OFFER_P99_LIMIT_MS,
    PHASES,
    SERVER_PROCESSES,
    SIDE_M,
    SPEED_MPS,
    TARGET_DRIVERS,
    TARGET_RATE,
)
from bench.city_traffic import City
from bench.policies import (
    DISPATCH_ROWS,
    dispatch_rows,
)
from bench.resources import rabbitmq_memory_mb


def _cpu_of(processes: dict[str, Any], name: str) -> float:
    return float(processes.get(name, {}).get("cpu_seconds", 0.0))


def _us_per_report(baseline: dict[str, Any], quiet: dict[str, Any] | None = None) -> dict[str, int]:
    """What a location report costs each process of the server, in microseconds, from
    the baseline (only reports); with `quiet`, less what the same sockets cost in as
    long sending nothing: a report's own cost."""
    scale = baseline["seconds_in_all"] / quiet["seconds_in_all"] if quiet else 0.0
    return {
        name: round(
            1e6
            * (usage["cpu_seconds"] - (scale * _cpu_of(quiet["processes"], name) if quiet else 0))
            / baseline["locations_sent"]
        )
        for name, usage in baseline["processes"].items()
    }


def server_cpu(processes: dict[str, Any]) -> float:
    """CPU seconds of the system under test: gateway, workers, broker, this system's
    Postgres backends (every Postgres process with --url). The broker is shared with
    whatever else uses it."""
    named: tuple[str, ...] = SERVER_PROCESSES
    if "postgres (this system)" not in processes:
        named = (*SERVER_PROCESSES, "postgres (all)")
    return sum(
        float(usage["cpu_seconds"]) for name, usage in processes.items() if name.startswith(named)
    )


def city_result(
    args: argparse.Namespace,
    run: City,
    signed_up_in: float,
    opened: int,
    failed: int,
    connect_seconds: float,
    rss_before: int | None,
    rss_connected: int | None,
) -> dict[str, Any]:
    phases = {name: run.summary(run.phases[name]) for name in PHASES if name in run.phases}
    baseline = phases.get("baseline")
    baseline_rate = (
        server_cpu(baseline["processes"]) / baseline["seconds_in_all"]
        if baseline and baseline["seconds_in_all"]
        else 0.0
    )
    for phase in phases.values():
        cpu = server_cpu(phase["processes"])
        trips = phase["trips"]["requested"]
        phase["server_cpu_seconds"] = round(cpu, 2)
        phase["server_cpu_ms_per_trip"] = round(1000 * cpu / trips, 2) if trips else None
        extra = cpu - baseline_rate * phase["seconds_in_all"]
        phase["server_cpu_ms_per_trip_above_baseline"] = (
            round(1000 * extra / trips, 2) if trips else None
        )
    if baseline and baseline["locations_sent"]:
        baseline["cpu_us_per_location_report"] = _us_per_report(baseline)
        quiet = phases.get("quiet")
        if quiet and quiet["seconds_in_all"]:
            baseline["cpu_us_per_location_report_above_quiet"] = _us_per_report(baseline, quiet)
    peak = max(
        (p["processes"].get("gateway", {}).get("peak_rss_mb", 0) for p in phases.values()),
        default=None,
    )
    memory = {
        "rss_before_mb": _mb(rss_before),
        "rss_connected_mb": _mb(rss_connected),
        "peak_rss_mb": peak or None,
        "kb_per_connection": round((rss_connected - rss_before) / opened / 1024, 1)
        if rss_before is not None and rss_connected is not None and opened
        else None,
    }
    result: dict[str, Any] = {
        "scenario": "city",
        "parameters": {
            "drivers": args.drivers,
            "riders": args.riders,
            "rate": args.rate,
            "seconds": args.seconds,
            "baseline_seconds": args.baseline_seconds,
            "broadcast_rate": args.broadcast_rate,
            "broadcast_seconds": args.broadcast_seconds,
            "report_seconds": args.report_seconds,
            "trip_seconds": args.trip_seconds,
            "racers": args.racers,
            "workers": None if args.url else args.workers,
            "area": {"centre": CENTRE, "side_m": SIDE_M, "speed_mps": SPEED_MPS},
            "server": {
                "dispatch_max_offers": run.max_offers,
                "dispatch_radius_meters": run.radius_m,
                "dispatch_widen_seconds": run.widen_seconds,
                "location_stale_seconds": run.stale_seconds,
            },
            "check": {
                "slack_seconds": args.slack,
                "distance_tolerance_m": DISTANCE_TOLERANCE_M,
            },
            "seed": args.seed,
        },
        "setup": {
            "signed_up_seconds": round(signed_up_in, 1),
            "sockets_opened": opened,
            "sockets_failed": failed,
            "seconds_to_open": round(connect_seconds, 1),
        },
        "gateway_memory": memory,
        "phases": phases,
        "comparison": _comparison(phases),
        "rabbitmq_memory_mb": rabbitmq_memory_mb(),
        "machine": city_machine(),
    }
    result["targets"] = _targets(result, run.max_offers)
    return result


def _mb(value: int | None) -> float | None:
    return None if value is None else round(value / 2**20, 1)


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 1) if a is not None and b else None


def _comparison(phases: dict[str, Any]) -> dict[str, Any]:
    """Broadcast over by distance: how many times the CPU per trip and offer p99."""
    near, wide = phases.get("by distance"), phases.get("broadcast")
    if not near or not wide:
        return {}
    return {
        "server_cpu_per_trip": _ratio(
            wide["server_cpu_ms_per_trip"], near["server_cpu_ms_per_trip"]
        ),
        "server_cpu_per_trip_above_baseline": _ratio(
            wide["server_cpu_ms_per_trip_above_baseline"],
            near["server_cpu_ms_per_trip_above_baseline"],
        ),
        "first_offer_p99": _ratio(
            wide["latency_ms"]["first_offer"]["p99"], near["latency_ms"]["first_offer"]["p99"]
        ),
        "every_offer_p99": _ratio(
            wide["latency_ms"]["every_offer"]["p99"], near["latency_ms"]["every_offer"]["p99"]
        ),
        "offers_per_trip": _ratio(wide["offers"]["per_trip_mean"], near["offers"]["per_trip_mean"]),
    }


def _targets(result: dict[str, Any], max_offers: int) -> list[dict[str, Any]]:
    near = result["phases"].get("by distance")
    if not near:
        return []
    check = near.get("nearest_check", {})
    params = result["parameters"]

    def target(name: str, value: Any, limit: str, met: bool | None) -> dict[str, Any]:
        return {"target": name, "value": value, "limit": limit, "met": met}

    def at_most(value: float | None, limit: float) -> bool | None:
        return None if value is None else value <= limit

    first_p99 = near["latency_ms"]["first_offer"]["p99"]
    assign_p99 = near["latency_ms"]["assign"]["p99"]
    live = near["live_tracking"]
    live_p99 = live["location_to_rider_ms"]["p99"]
    ring_max = near["offers"]["first_ring_per_trip_max"]
    kb = result["gateway_memory"]["kb_per_connection"]
    connected = result["setup"]["sockets_opened"] - params["riders"]
    return [
        target(
            "connected drivers",
            connected,
            f">= {TARGET_DRIVERS}",
            connected >= TARGET_DRIVERS,
        ),
        target(
            "trip requests/s achieved",
            near["trips"]["achieved_rate"],
            f">= {TARGET_RATE}",
            near["trips"]["achieved_rate"] >= TARGET_RATE,
        ),
        target(
            "offer p99 (ms, request -> first offer)",
            first_p99,
            f"<= {OFFER_P99_LIMIT_MS}",
            at_most(first_p99, OFFER_P99_LIMIT_MS),
        ),
        target(
            "assign p99 (ms)",
            assign_p99,
            f"<= {ASSIGN_P99_LIMIT_MS}",
            at_most(assign_p99, ASSIGN_P99_LIMIT_MS),
        ),
        target(
            "location -> rider p99 (ms, update.location sent -> driver.location received)",
            live_p99,
            f"<= {LOCATION_P99_LIMIT_MS}",
            at_most(live_p99, LOCATION_P99_LIMIT_MS),
        ),
        target(
            "driver.location to a rider not on the trip, or after it ended",
            live["wrong"],
            "0",
            live["wrong"] == 0,
        ),
        target(
            "offers per trip in the first ring (max)",
            ring_max,
            f"<= {max_offers}",
            at_most(ring_max, max_offers),
        ),
        target(
            "double assignments", near["double_assignments"], "0", near["double_assignments"] == 0
        ),
        target("lost trips", near["trips"]["lost"], "0", near["trips"]["lost"] == 0),
        target(
            f"first-ring offers beyond the {max_offers} nearest free drivers",
            check.get("rank_above_max_offers"),
            "0",
            check.get("rank_above_max_offers") == 0 if check else None,
        ),
        target("gateway KB per connection", kb, f"<= {KB_PER_CONNECTION_LIMIT}", at_most(kb, 30)),
    ]


def city_machine() -> dict[str, Any]:
    import platform

    return {
        "cpus": psutil.cpu_count(),
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


# --- the report ----------------------------------------------------------------


def city_compare_markdown(result: dict[str, Any]) -> str:
    """The two runs side by side on the figures that travel, then each in full."""
    compared = result["city_compare"]
    labels = compared["labels"]
    sides = {side: compared[side] for side in ("before", "after")}

    def figure(run: dict[str, Any], *path: str) -> Any:
        value: Any = run
        for key in path:
            value = value.get(key) if isinstance(value, dict) else None
        return "-" if value is None else value

    def per_report(run: dict[str, Any], figure_name: str = "cpu_us_per_location_report") -> Any:
        costs = figure(run, "phases", "baseline", figure_name)
        if not isinstance(costs, dict):
            return "-"
        server = {k: v for k, v in costs.items() if k != "load generator"}
        return f"{sum(server.values())} ({', '.join(f'{k} {v}' for k, v in server.items())})"

    rows: list[tuple[str, Callable[[dict[str, Any]], Any]]] = [
        (
            "server CPU ms per trip, by distance (above the baseline)",
            lambda r: (
                f"{figure(r, 'phases', 'by distance', 'server_cpu_ms_per_trip')} "
                f"({figure(r, 'phases', 'by distance', 'server_cpu_ms_per_trip_above_baseline')})"
            ),
        ),
        ("server CPU us per location report (baseline)", per_report),
        (
            "the same, less the quiet phase's cost (sockets open, nothing sent)",
            lambda r: per_report(r, "cpu_us_per_location_report_above_quiet"),
        ),
        (
            "offer p99 ms (first offer), by distance",
            lambda r: figure(r, "phases", "by distance", "latency_ms", "first_offer", "p99"),
        ),
        (
            "assign p99 ms, by distance",
            lambda r: figure(r, "phases", "by distance", "latency_ms", "assign", "p99"),
        ),
        ("gateway KB per connection", lambda r: figure(r, "gateway_memory", "kb_per_connection")),
    ]
    lines = [
        "### city, side by side",
        "",
        f"| figure | before ({labels['before']}) | after ({labels['after']}) |",
        "|---|---|---|",
    ]
    for name, cell in rows:
        lines.append(f"| {name} | {cell(sides['before'])} | {cell(sides['after'])} |")
    for side, run in sides.items():
        lines += ["", f"## {side} ({labels[side]})", "", city_markdown(run)]
    return "\n".join(lines) + "\n"


def city_markdown(result: dict[str, Any]) -> str:
    params = result["parameters"]
    server = params["server"]
    setup = result["setup"]
    phases = result["phases"]
    names = list(phases)
    lines = [
        "### city",
        "",
        f"{setup['sockets_opened'] - params['riders']:,} drivers connected "
        f"({setup['sockets_failed']} sockets failed), {params['riders']:,} riders; each "
        f"driver reports every {params['report_seconds']:g} s, moving at "
        f"{params['area']['speed_mps'][0]:g}-{params['area']['speed_mps'][1]:g} m/s through "
        f"{params['area']['side_m'] / 1000:g} x {params['area']['side_m'] / 1000:g} km around "
        f"{params['area']['centre'][0]}, {params['area']['centre'][1]}. "
        f"{params['workers']} worker(s); dispatch: at most {server['dispatch_max_offers']:g} "
        f"offers within {server['dispatch_radius_meters']:g} m, widening every "
        f"{server['dispatch_widen_seconds']:g} s; locations stale after "
        f"{server['location_stale_seconds']:g} s. {params['racers']} racer(s) per trip, "
        f"trips completed over {params['trip_seconds']:g} s.",
        "",
        "| target | value | limit | met |",
        "|---|---|---|---|",
    ]
    for t in result["targets"]:
        met = "-" if t["met"] is None else ("yes" if t["met"] else "**no**")
        lines.append(f"| {t['target']} | {t['value']} | {t['limit']} | {met} |")

    def row(name: str, cell: Callable[[dict[str, Any]], Any]) -> str:
        cells = []
        for phase in names:
            try:
                value = cell(phases[phase])
            except (KeyError, TypeError):
                value = "-"
            cells.append("-" if value is None else str(value))
        return f"| {name} | " + " | ".join(cells) + " |"

    def lat(kind: str, keys: tuple[str, ...] = ("p50", "p95", "p99", "max")) -> Any:
        def cell(p: dict[str, Any]) -> str:
            stats = p["latency_ms"][kind]
            return " / ".join(str(stats[k]) for k in keys) if stats["count"] else "-"

        return cell

    lines += [
        "",
        "| measure | " + " | ".join(names) + " |",
        "|---|" + "---|" * len(names),
        row(
            "trip requests/s offered / achieved",
            lambda p: f"{p['rate_offered']} / {p['trips']['achieved_rate']}",
        ),
        row("trips requested", lambda p: p["trips"]["requested"]),
        row("outcomes", lambda p: _counts(p["trips"]["outcomes"])),
        row("**lost trips** (no outcome by the end)", lambda p: f"**{p['trips']['lost']}**"),
        row("requests skipped (no free rider)", lambda p: p["trips"]["skipped_no_free_rider"]),
        row("**offer ms** (request -> first offer) p50 / p95 / p99 / max", lat("first_offer")),
        row("every offer ms p50 / p95 / p99 / max", lat("every_offer")),
        row("rider notified ms p50 / p95 / p99 / max", lat("rider_notified")),
        row("**assign ms** p50 / p95 / p99 / max", lat("assign")),
        row("full trip ms p50 / p99", lat("full_trip", ("p50", "p99"))),
        row(
            "**location -> rider ms** (update.location sent -> driver.location received) "
            "p50 / p95 / p99 / max (count)",
            _live_latency_cell,
        ),
        row(
            "driver.location frames: in all / at acceptance (position reported before); "
            "trips with a driver / with frames; frames per trip (mean)",
            lambda p: (
                f"{p['live_tracking']['frames']} / {p['live_tracking']['at_acceptance']}; "
                f"{p['live_tracking']['trips_with_a_driver']} / "
                f"{p['live_tracking']['trips_with_frames']}; "
                f"{p['live_tracking']['frames_per_trip_mean']}"
            ),
        ),
        row(
            "reports sent under way / not delivered to the rider; delivered twice",
            lambda p: (
                f"{p['live_tracking']['reports_under_way']} / "
                f"{p['live_tracking']['reports_under_way_not_delivered']}; "
                f"{p['live_tracking']['duplicates']}"
            ),
        ),
        row(
            "**driver.location wrong**: to a rider not on the trip / matching no report of "
            "the trip's driver / after the trip ended (before the rider's trip.accepted)",
            lambda p: (
                f"**{p['live_tracking']['to_a_rider_not_on_the_trip']}** / "
                f"**{p['live_tracking']['matching_no_report_of_the_trips_driver']}** / "
                f"**{p['live_tracking']['after_the_trip_ended']}** "
                f"({p['live_tracking']['before_the_riders_trip_accepted']})"
            ),
        ),
        row("offers per trip (mean)", lambda p: p["offers"]["per_trip_mean"]),
        row(
            "first-ring offers per trip mean / max",
            lambda p: (
                f"{p['offers']['first_ring_per_trip_mean']} / "
                f"{p['offers']['first_ring_per_trip_max']}"
            ),
        ),
        row("offers delivered per second", lambda p: p["offers"]["per_second"]),
        row("**double assignments**", lambda p: f"**{p['double_assignments']}**"),
        row(
            "**nearest check**: first-ring offers checked / rank above max / worst rank",
            lambda p: (
                f"{p['nearest_check']['first_ring_offers_checked']} / "
                f"**{p['nearest_check']['rank_above_max_offers']}** / "
                f"{p['nearest_check']['worst_rank']}"
            ),
        ),
        row(
            "strict rank (latest positions only): above max / worst",
            lambda p: (
                f"{p['nearest_check']['strict_rank_above_max_offers']} / "
                f"{p['nearest_check']['worst_strict_rank']}"
            ),
        ),
        row(
            "offers to surely busy drivers / without a location / beyond the radius",
            lambda p: (
                f"{p['nearest_check']['offered_while_surely_busy']} / "
                f"{p['nearest_check']['offered_without_a_location']} / "
                f"{p['nearest_check']['beyond_radius']}"
            ),
        ),
        row(
            "distance_m vs the generator's, m p99 / max",
            lambda p: (
                f"{p['nearest_check']['distance_m_mismatch']['p99']} / "
                f"{p['nearest_check']['distance_m_mismatch']['max']}"
            ),
        ),
        row(
            "position the offer's distance_m was measured from: older than the latest "
            "report before the request, ms p50 / p99 / max; superseded over the slack "
            "before; matching no recent report",
            _position_used_cell,
        ),
        *(row(name, partial(_dispatch_cell, n)) for n, name in enumerate(DISPATCH_ROWS)),
        row("lost races (trip_unavailable, expected)", lambda p: p["lost_races"]),
        row("requests sent again (service_unavailable)", lambda p: p["retries"]),
        row("error frames", lambda p: _counts(p["error_frames"]) or 0),
        row("socket closes", lambda p: p["socket_closes"]),
        row("locations sent", lambda p: p["locations_sent"]),
        row(
            "**server CPU ms per trip** (above the baseline's rate)",
            lambda p: (
                f"{p['server_cpu_ms_per_trip']} ({p['server_cpu_ms_per_trip_above_baseline']})"
            ),
        ),
        row("server CPU s", lambda p: p["server_cpu_seconds"]),
        row("machine CPU busy % (all cores)", lambda p: p["machine_cpu_busy_percent"]),
        row(
            "other processes over 5% of a CPU meanwhile",
            lambda p: (
                "; ".join(
                    f"{o['command']} {o['cpu_percent']}%" for o in p["busiest_other_processes"]
                )
                or "none"
            ),
        ),
        row(
            "generator GC pauses: count / total ms / max ms",
            lambda p: " / ".join(
                str(p["generator_gc_pauses"][k]) for k in ("count", "total_ms", "max_ms")
            ),
        ),
        row(
            "generator loop lag ms p50 / p99 / max",
            lambda p: " / ".join(str(p["generator_loop_lag_ms"][k]) for k in ("p50", "p99", "max")),
        ),
    ]
    comparison = result.get("comparison") or {}
    if comparison:
        lines += [
            "",
            "Broadcast over by distance (times): "
            f"server CPU per trip {comparison['server_cpu_per_trip']} "
            f"({comparison['server_cpu_per_trip_above_baseline']} above the baseline), "
            f"offer p99 (first offer) {comparison['first_offer_p99']}, "
            f"every offer's p99 {comparison['every_offer_p99']}, "
            f"offers per trip {comparison['offers_per_trip']}.",
        ]
    processes = sorted({name for p in phases.values() for name in p["processes"]})
    lines += [
        "",
        "| process: CPU % (peak RSS MB) | " + " | ".join(names) + " |",
        "|---|" + "---|" * len(names),
    ]
    for process in processes:
        lines.append(row(process, partial(_usage, process)))
    for figure, what in (
        ("cpu_us_per_location_report", "CPU per location report, from the baseline (reports only)"),
        (
            "cpu_us_per_location_report_above_quiet",
            "The same less what the quiet phase (sockets open, nothing sent) cost in as long",
        ),
    ):
        if per_report := phases.get("baseline", {}).get(figure):
            lines += [
                "",
                f"{what}, in microseconds: "
                + ", ".join(f"{name} {us}" for name, us in per_report.items())
                + ".",
            ]
    memory = result["gateway_memory"]
    lines += [
        "",
        f"Gateway RSS {memory['rss_before_mb']} MB before the sockets, "
        f"{memory['rss_connected_mb']} MB with them (after one round of reports), peak "
        f"{memory['peak_rss_mb']} MB: **{memory['kb_per_connection']} KB per connection**. "
        f"Signed up in {setup['signed_up_seconds']} s, sockets opened in "
        f"{setup['seconds_to_open']} s.",
    ]
    return "\n".join(lines) + "\n"


def _dispatch_cell(n: int, phase: dict[str, Any]) -> str:
    return dispatch_rows(phase)[n][1]


def _live_latency_cell(phase: dict[str, Any]) -> str:
    stats = phase["live_tracking"]["location_to_rider_ms"]
    if not stats["count"]:
        return "-"
    return " / ".join(str(stats[k]) for k in ("p50", "p95", "p99", "max")) + f" ({stats['count']})"


def _position_used_cell(phase: dict[str, Any]) -> str:
    used = phase["nearest_check"]["position_used"]
    age = " / ".join(str(used["behind_latest_report_ms"][k]) for k in ("p50", "p99", "max"))
    return (
        f"{age}; {used['superseded_by_a_report_older_than_slack']}; "
        f"{used['matching_no_recent_report']}"
    )


def _usage(process: str, phase: dict[str, Any]) -> str:
    usage = phase["processes"][process]
    return f"{usage['cpu_percent']} ({usage['peak_rss_mb']})"


def _counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{k}: {v}" for k, v in sorted(counts.items()))
