"""CPU and memory of every process taking part, sampled while a run goes on."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import statistics
import subprocess
import time
from dataclasses import dataclass, field
from typing import Any

import psutil


@dataclass
class Watched:
    processes: list[psutil.Process]
    cpu_start: float = 0.0
    peak_rss: int = 0

    def cpu(self) -> float:
        total = 0.0
        for process in self.processes:
            with contextlib.suppress(psutil.Error):
                times = process.cpu_times()
                total += times.user + times.system
        return total

    def rss(self) -> int:
        total = 0
        for process in self.processes:
            with contextlib.suppress(psutil.Error):
                total += process.memory_info().rss
        return total


@dataclass
class ResourceMonitor:
    """Samples peak RSS twice a second; CPU is the difference of counters over the run."""

    watched: dict[str, Watched] = field(default_factory=dict)
    _started: float = 0.0
    _task: asyncio.Task[None] | None = None

    def watch(self, name: str, pids: list[int]) -> None:
        processes = [psutil.Process(pid) for pid in pids if psutil.pid_exists(pid)]
        self.watched[name] = Watched(processes)

    def start(self) -> None:
        self._started = time.monotonic()
        for watched in self.watched.values():
            watched.cpu_start = watched.cpu()
            watched.peak_rss = watched.rss()
        self._task = asyncio.create_task(self._sample())

    async def _sample(self) -> None:
        while True:
            for watched in self.watched.values():
                watched.peak_rss = max(watched.peak_rss, watched.rss())
            await asyncio.sleep(0.5)

    def stop(self) -> dict[str, dict[str, Any]]:
        if self._task is not None:
            self._task.cancel()
        elapsed = max(time.monotonic() - self._started, 1e-9)
        report = {}
        for name, watched in self.watched.items():
            cpu = watched.cpu() - watched.cpu_start
            report[name] = {
                "cpu_seconds": round(cpu, 2),
                "cpu_percent": round(100 * cpu / elapsed, 1),
                "peak_rss_mb": round(watched.peak_rss / 2**20, 1),
            }
        return report


def pids_named(*names: str) -> list[int]:
    """Every process whose name is one of `names` (Postgres backends, the RabbitMQ VM)."""
    return [p.pid for p in psutil.process_iter(["name"]) if p.info["name"] in names]


def rabbitmq_memory_mb() -> float | None:
    """Total memory the broker reports, or None where rabbitmqctl cannot be run."""
    try:
        out = subprocess.run(
            ["rabbitmqctl", "status"], capture_output=True, text=True, timeout=30, check=True
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    match = re.search(r"Total memory used: ([\d.]+) (gb|mb|kb)", out, re.IGNORECASE)
    if match is None:
        return None
    scale = {"gb": 1024, "mb": 1, "kb": 1 / 1024}[match.group(2).lower()]
    return round(float(match.group(1)) * scale, 1)


# Memory the broker's VM holds but has not handed to anything: left out of "allocated".
_UNALLOCATED = ("reserved_unallocated", "allocated_unused")
# What the broker keeps for queues, bindings, consumers, connections and channels: the
# processes of classic queues, the tables of queue and binding records (mnesia, other
# ETS), per-object metrics, each connection's and channel's processes. Left out: message
# bodies (binary; an idle user has none, and other users of a shared broker move it by
# megabytes from second to second), code, atoms, the allocator's reserve, other processes.
OBJECT_CATEGORIES = (
    "queue_procs",
    "mnesia",
    "other_ets",
    "metrics",
    "msg_index",
    "connection_readers",
    "connection_writers",
    "connection_channels",
    "connection_other",
)
BREAKDOWN_SAMPLES = 5


def _rabbitmq_json(*command: str) -> Any:
    try:
        out = subprocess.run(
            [*command, "--formatter", "json", "--quiet"],
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
        ).stdout
        return json.loads(out)
    except (OSError, subprocess.SubprocessError, ValueError):
        return None


def rabbitmq_memory_breakdown(samples: int = BREAKDOWN_SAMPLES) -> dict[str, int] | None:
    """The broker's memory by category, in bytes (`rabbitmq-diagnostics memory_breakdown`),
    with `total` (what `rabbitmqctl status` reports: the VM's RSS here), `allocated`
    (every category but the allocator's reserve) and `objects` (OBJECT_CATEGORIES).
    The median of a few samples, a second apart: other users of the broker move it."""
    taken = []
    for n in range(samples):
        if n:
            time.sleep(1)
        raw = _rabbitmq_json("rabbitmq-diagnostics", "memory_breakdown", "--unit", "bytes")
        if not isinstance(raw, dict):
            return None
        sample = {name: int(entry["bytes"]) for name, entry in raw.items()}
        sample["allocated"] = sum(v for k, v in sample.items() if k not in _UNALLOCATED)
        sample["total"] = sum(int(entry["bytes"]) for entry in raw.values())
        sample["objects"] = sum(sample.get(k, 0) for k in OBJECT_CATEGORIES)
        taken.append(sample)
    return {key: int(statistics.median(s[key] for s in taken)) for key in taken[0]}


def rabbitmq_queues(prefix: str) -> list[dict[str, Any]] | None:
    """The broker's queues whose names start with `prefix`: name, durable, consumers,
    memory (of the queue's process, bytes)."""
    raw = _rabbitmq_json("rabbitmqctl", "list_queues", "name", "durable", "consumers", "memory")
    if not isinstance(raw, list):
        return None
    return [q for q in raw if isinstance(q, dict) and str(q.get("name", "")).startswith(prefix)]


def rabbitmq_pids() -> list[int]:
    """The machine's broker (its OS pid as `rabbitmqctl status` tells it), not any other
    Erlang VM a test suite may be running; every beam.smp where that cannot be asked."""
    try:
        out = subprocess.run(
            ["rabbitmqctl", "status"], capture_output=True, text=True, timeout=30, check=True
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return pids_named("beam.smp")
    match = re.search(r"OS PID: (\d+)", out)
    return [int(match.group(1))] if match else pids_named("beam.smp")


def rabbitmq_bindings(prefix: str) -> int | None:
    """Bindings to the queues whose names start with `prefix.` (the default exchange's
    implicit one per queue left out)."""
    raw = _rabbitmq_json("rabbitmqctl", "list_bindings", "source_name", "destination_name")
    if not isinstance(raw, list):
        return None
    return sum(
        1
        for b in raw
        if isinstance(b, dict)
        and b.get("source_name")
        and str(b.get("destination_name", "")).startswith(prefix)
    )
