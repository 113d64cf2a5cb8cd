"""CPU and memory of every process taking part, sampled while a run goes on."""

from __future__ import annotations

import asyncio
import contextlib
import re
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
