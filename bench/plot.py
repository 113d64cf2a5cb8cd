"""The latency-over-time plot of the steady scenario."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # no screen: render straight to PNG
import matplotlib.pyplot as plt


def plot_timeline(result: dict[str, Any], target: Path) -> None:
    seconds = [point["second"] for point in result["timeline"]]
    figure, axes = plt.subplots(figsize=(9, 4))
    for key, style in (("p50", "-"), ("p90", "--"), ("p99", "-."), ("max", ":")):
        axes.plot(seconds, [point[key] for point in result["timeline"]], style, label=key)
    params = result["parameters"]
    axes.set_title(
        f"Offer latency, steady: {params['drivers']} drivers, {params['riders']} riders, "
        f"{params['rate']} requests/s, K={params['racers']}"
    )
    axes.set_xlabel("second of the run")
    axes.set_ylabel("request sent -> driver receives offer (ms)")
    axes.grid(alpha=0.3)
    axes.legend()
    figure.tight_layout()
    figure.savefig(target, dpi=110)
    plt.close(figure)
