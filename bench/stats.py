"""Percentiles, and the results file and table a run writes."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any


def percentiles(samples_ms: Sequence[float]) -> dict[str, float | int | None]:
    """p50/p90/p99/max of latencies in milliseconds (nearest-rank), with the count."""
    if not samples_ms:
        return {"count": 0, "p50": None, "p90": None, "p99": None, "max": None}
    ordered = sorted(samples_ms)

    def rank(p: float) -> float:
        return round(ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)], 2)

    return {
        "count": len(ordered),
        "p50": rank(50),
        "p90": rank(90),
        "p99": rank(99),
        "max": round(ordered[-1], 2),
    }


def markdown_table(result: dict[str, Any]) -> str:
    lines = [
        f"### {result['scenario']}",
        "",
        "| latency (ms) | count | p50 | p90 | p99 | max |",
        "|---|---|---|---|---|---|",
    ]
    for name, stats in result["latency_ms"].items():
        cells = [stats[key] for key in ("count", "p50", "p90", "p99", "max")]
        lines.append(f"| {name} | " + " | ".join(str(cell) for cell in cells) + " |")
    offers = result["offers"]
    rates = result["requests_per_second"]
    lines += [
        "",
        "| measure | value |",
        "|---|---|",
        f"| trip requests/s offered / achieved | {rates['offered']} / {rates['achieved']} |",
        "| offers expected / received / missing | "
        f"{offers['expected']} / {offers['received']} / {offers['missing']} |",
        f"| offers delivered per second | {offers['delivered_per_second']} |",
        f"| trips completed | {result['trips']['completed']} of {result['trips']['requested']} |",
        f"| trips refused (trip_in_progress) | {result['trips'].get('refused', 0)} |",
        f"| double assignments | {result['double_assignments']} |",
        "| error frames (lost races excluded) | "
        f"{sum(result['error_frames'].values())} {result['error_frames'] or ''} |",
        f"| lost races (trip_unavailable, expected) | {result['lost_races']} |",
        f"| socket closes | {result['socket_closes']} |",
    ]
    if result.get("rabbitmq_memory_mb") is not None:
        lines.append(f"| RabbitMQ memory (MB) | {result['rabbitmq_memory_mb']} |")
    lines += ["", "| process | CPU s | CPU % | peak RSS MB |", "|---|---|---|---|"]
    for name, usage in result["processes"].items():
        lines.append(
            f"| {name} | {usage['cpu_seconds']} | {usage['cpu_percent']} | {usage['peak_rss_mb']} |"
        )
    return "\n".join(lines) + "\n"
