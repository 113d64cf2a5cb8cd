"""Each collection of the cyclic garbage collector is measured, by generation."""

from __future__ import annotations

import gc

from prometheus_client import REGISTRY

from shared import gc_pauses


def collections(generation: int) -> float:
    value = REGISTRY.get_sample_value(
        "taxi_gc_pause_seconds_count", {"generation": str(generation)}
    )
    return value or 0.0


def test_a_full_collection_is_measured_once_however_often_watching_starts() -> None:
    gc_pauses.watch()
    gc_pauses.watch()
    before = collections(2)

    gc.collect()

    assert collections(2) == before + 1
    assert REGISTRY.get_sample_value("taxi_gc_pause_seconds_sum", {"generation": "2"}) > 0
