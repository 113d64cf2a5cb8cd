"""The cluster scenario's report (`bench.cluster`)."""

from __future__ import annotations

from typing import Any

from bench.cluster import CITY_FIGURES, CITY_PHASES, process_ms_per_trip
from tools.local_postgres import DCS


def cluster_markdown(result: dict[str, Any]) -> str:
    params = result["parameters"]
    one, three, ratio = result["one_node"], result["cluster"], result["ratios"]
    lines = [
        "### cluster: the system on three RabbitMQ nodes against one node, same run",
        "",
        f"{params['drivers']} drivers, {params['riders']} riders, {params['rate']} requests/s, "
        f"K={params['racers']}, {params['gateways']} gateway(s) and {params['workers']} "
        f"workers each; {params['rounds']} rounds of {params['seconds_per_round']:g} s per "
        f"system, in the order {' '.join('C' if s == 'cluster' else 'O' for s in result['order'])}"
        " (O = one node, C = cluster). Private RabbitMQ nodes on this machine, "
        f"booted in {result['nodes_boot_seconds']} s.",
        "",
        "| measure | one node | cluster | cluster / one node |",
        "|---|---|---|---|",
    ]

    def row(name: str, a: Any, b: Any, r: Any) -> None:
        lines.append(f"| {name} | {a} | {b} | {'-' if r is None else r} |")

    for label, key in (("offer", "offer"), ("assign", "assign")):
        for pct in ("p50", "p99"):
            row(
                f"{label} {pct} (ms)",
                one["latency_ms"][key][pct],
                three["latency_ms"][key][pct],
                ratio.get(f"{key}_{pct}"),
            )
    row(
        "server CPU per trip (ms)",
        one["server_cpu_ms_per_trip"],
        three["server_cpu_ms_per_trip"],
        ratio["server_cpu_ms_per_trip"],
    )
    row(
        "RabbitMQ CPU per trip (ms, every node)",
        process_ms_per_trip(one, "rabbitmq"),
        process_ms_per_trip(three, "rabbitmq"),
        ratio["rabbitmq_cpu_ms_per_trip"],
    )
    for name, get in (
        ("trips completed", lambda r: f"{r['trips']['completed']} of {r['trips']['requested']}"),
        ("offers missing", lambda r: r["offers"]["missing"]),
        ("double assignments", lambda r: r["double_assignments"]),
        ("error frames", lambda r: sum(r["error_frames"].values())),
    ):
        row(name, get(one), get(three), None)
    lines += ["", "| process | one node CPU s | cluster CPU s |", "|---|---|---|"]
    for name in sorted(set(one["processes"]) | set(three["processes"])):
        a = one["processes"].get(name, {}).get("cpu_seconds", "-")
        b = three["processes"].get(name, {}).get("cpu_seconds", "-")
        lines.append(f"| {name} | {a} | {b} |")
    lines += _city_markdown(result.get("city"))
    failover = result["failover"]
    if failover["kills"] or failover.get("database_kills"):
        lines += [
            "",
            f"### failover: kill -9 of the node gateway 1 is on, {len(failover['kills'])} "
            f"time(s), steady traffic going on; each node booted again "
            f"{params['recovery_seconds']:g} s later",
            "",
            "Gap: seconds from the kill to the first offer (to the first assignment) of a "
            "trip requested after it by a rider of a gateway that was on the killed node "
            '("anywhere": any gateway). Windows: '
            f"{params['recovery_seconds']:g} s before the kill and after it.",
            "",
            "| kill | node | processes on it | gap offer | gap assign | gap offer anywhere "
            "| offer p99 before / recovery (ms) | assign p99 before / recovery (ms) "
            "| trips requested / completed in recovery | node back after (s) |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for n, kill in enumerate(failover["kills"], 1):
            gaps, before, after = (
                kill["gap_seconds"],
                kill["windows"]["before"],
                kill["windows"]["recovery"],
            )
            lines.append(
                f"| {n} | {kill['node']} | {', '.join(kill['processes_on_it'])} "
                f"| {gaps['offer_on_affected_gateway']} | {gaps['assign_on_affected_gateway']} "
                f"| {gaps['offer_anywhere']} "
                f"| {before['offer_ms']['p99']} / {after['offer_ms']['p99']} "
                f"| {before['assign_ms']['p99']} / {after['assign_ms']['p99']} "
                f"| {after['trips_requested']} / {after['trips_completed']} "
                f"| {kill.get('node_back_after_seconds', '-')} |"
            )
        lines += _database_kills_markdown(failover.get("database_kills", []), params)
        trips = failover["trips"]
        lines += [
            "",
            "| failover run | value |",
            "|---|---|",
            f"| trips requested / completed | {trips['requested']} / {trips['completed']} |",
            f"| refused (trip_in_progress) | {trips['refused_trip_in_progress']} |",
            f"| lost trips | {trips['lost']} |",
            f"| requests stored twice | {trips['requests_stored_twice']} |",
            f"| double assignments (drivers told / riders told) | "
            f"{failover['double_assignments']} / {trips['accepted_more_than_once']} |",
            f"| commands refused service_unavailable / sent again | "
            f"{failover['commands_refused_unavailable']} / {failover['commands_sent_again']} |",
            f"| trips offered to nobody, taken from the open list | "
            f"{failover['trips_taken_from_the_open_list']} |",
            f"| offers missing (transient, lost with a node) | {failover['offers_missing']} |",
            f"| other error frames | {failover['error_frames'] or 0} |",
            f"| socket closes | {failover['socket_closes']} |",
        ]
    return "\n".join(lines) + "\n"


def _database_kills_markdown(kills: list[dict[str, Any]], params: dict[str, Any]) -> list[str]:
    if not kills:
        return []
    lines = [
        "",
        f"### database failover: kill -9 of the Postgres primary, {len(kills)} time(s), "
        "steady traffic going on",
        "",
        "Patroni (tools/local_postgres.py: "
        + ", ".join(f"{k} {v}" for k, v in DCS.items() if not isinstance(v, dict))
        + ") promotes the synchronous standby; every process lists both servers in "
        "TAXI_DATABASE_URL with target_session_attrs=read-write. Gap: seconds from the kill "
        "to the first offer (first assignment) of a trip requested after it. Windows: "
        f"{params['recovery_seconds']:g} s before the kill and after it.",
        "",
        "| kill | killed | promoted | gap offer | gap assign "
        "| offer p99 before / recovery (ms) | assign p99 before / recovery (ms) "
        "| trips requested / completed in recovery | old primary a standby again after (s) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for n, kill in enumerate(kills, 1):
        gaps, windows = kill["gap_seconds"], kill["windows"]
        before, after = windows["before"], windows["recovery"]
        lines.append(
            f"| {n} | {kill['node']} | {kill['promoted']} "
            f"| {gaps['offer_anywhere']} | {gaps['assign_anywhere']} "
            f"| {before['offer_ms']['p99']} / {after['offer_ms']['p99']} "
            f"| {before['assign_ms']['p99']} / {after['assign_ms']['p99']} "
            f"| {after['trips_requested']} / {after['trips_completed']} "
            f"| {kill['standby_again_after_seconds']} |"
        )
    return lines


def _city_markdown(city: dict[str, Any] | None) -> list[str]:
    if not city:
        return []
    runs = city["runs"]
    failed = {side: run["error"] for side, run in runs.items() if "error" in run}
    if failed:
        return ["", f"### city, reduced: not measured ({failed})"]
    params = runs["cluster"]["parameters"]
    lines = [
        "",
        f"### city, reduced: {params['drivers']} drivers, {params['rate']} trips/s by distance "
        f"for {params['seconds']:g} s, then {params['broadcast_rate']} trips/s by broadcast; "
        "one gateway, one node then the cluster",
        "",
        "| phase | measure | one node | cluster | cluster / one node |",
        "|---|---|---|---|---|",
    ]
    for phase in CITY_PHASES:
        one = city["figures"]["one node"].get(phase, {})
        three = city["figures"]["cluster"].get(phase, {})
        for name in (*CITY_FIGURES, "trips", "lost", "double_assignments"):
            ratio = city["ratios"][phase].get(name) if name in CITY_FIGURES else None
            lines.append(
                f"| {phase} | {name.replace('_', ' ')} | {one.get(name)} | {three.get(name)} "
                f"| {'-' if ratio is None else ratio} |"
            )
    return lines
