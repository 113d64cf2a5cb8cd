"""How long Python's cyclic garbage collector stops the process.

A collection of the oldest generation walks every long-lived object: in a gateway,
every socket's. While it runs nothing else does, and the pause shows in the latency
tail and nowhere else. `taxi_gc_pause_seconds{generation}` measures each collection,
in the gateway and the workers alike, so that a tail can be told apart from the work.
"""

from __future__ import annotations

import gc
import time
from typing import Any

from prometheus_client import Histogram

PAUSES = Histogram(
    "taxi_gc_pause_seconds",
    "How long each collection of the cyclic garbage collector stopped the process, by "
    "generation (2: the oldest, every long-lived object).",
    ["generation"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0),
)

_started = 0.0


def _measure(phase: str, info: dict[str, Any]) -> None:
    global _started
    if phase == "start":
        _started = time.perf_counter()
    else:
        PAUSES.labels(str(info["generation"])).observe(time.perf_counter() - _started)


def watch() -> None:
    """Measure every collection from now on (once per process, however often called)."""
    if _measure not in gc.callbacks:
        gc.callbacks.append(_measure)
