"""Where the server's time goes while trips run: `city --profile` (py-spy).

During the by-distance phase, py-spy samples the gateway and the first worker
(`--gil`: only while a thread holds the interpreter, so time the event loop spends
waiting in epoll is not counted as work) and writes, per system and process, the
raw stacks (`<out>/profiles/<system>-<process>.txt`, for a flame graph) and the
functions holding the most samples, their callees included
(`<out>/profiles/<system>-<process>.md`). Run with `--compare-with` for the
profiles before and after a change, on the same city.
"""

from __future__ import annotations

import asyncio
import re
import shutil
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

# Samples a second: enough for shares of a few percent over a phase of 30 s or more,
# little enough that the sampled processes barely notice (py-spy reads from outside).
RATE = 100
# Functions listed per process in the summary.
TOP = 40
# The processes profiled, by their names in `LocalSystem.pids()`.
PROFILED = ("gateway", "dispatcher-0")


def py_spy() -> str:
    """py-spy of this environment (the `bench` extra installs it)."""
    found = shutil.which("py-spy") or shutil.which("py-spy", path=str(Path(sys.executable).parent))
    if found is None:
        raise SystemExit("--profile needs py-spy: `make install-bench` installs it")
    return found


@dataclass
class Profiles:
    """py-spy recording the profiled processes of one system for `seconds`."""

    out: Path
    system: str
    seconds: float
    recordings: dict[str, asyncio.subprocess.Process] = field(default_factory=dict)

    async def start(self, pids: dict[str, list[int]]) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        for name in PROFILED:
            if not pids.get(name):
                continue
            # The process itself, or with several gateway processes one of them (the
            # first pid is then their supervisor, which only waits).
            self.recordings[name] = await asyncio.create_subprocess_exec(
                py_spy(),
                "record",
                "--pid",
                str(pids[name][-1]),
                "--rate",
                str(RATE),
                "--duration",
                str(max(1, int(self.seconds))),
                "--gil",
                "--nonblocking",
                "--format",
                "raw",
                "--output",
                str(self._path(name, "txt")),
                stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.PIPE,
            )

    async def finish(self) -> dict[str, str]:
        """Wait for the recordings; write each summary; return where they are."""
        written = {}
        for name, recording in self.recordings.items():
            _, stderr = await recording.communicate()
            raw = self._path(name, "txt")
            if recording.returncode != 0 or not raw.exists():
                print(f"  py-spy on {name} failed: {stderr.decode().strip()}", file=sys.stderr)
                continue
            summary = self._path(name, "md")
            summary.write_text(summarise(raw.read_text(), f"{self.system}: {name}"))
            written[name] = str(summary)
        return written

    def _path(self, name: str, suffix: str) -> Path:
        slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", self.system).strip("-")
        return self.out / f"{slug}-{name}.{suffix}"


def summarise(raw: str, title: str, top: int = TOP) -> str:
    """The functions in the most samples (callees included) of py-spy's raw output: one
    line per stack, frames separated by `;`, the sample count last."""
    inclusive: Counter[str] = Counter()
    own: Counter[str] = Counter()
    total = 0
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        samples = int(count)
        total += samples
        frames = [_function(frame) for frame in stack.split(";")]
        for function in set(frames):
            inclusive[function] += samples
        own[frames[-1]] += samples
    lines = [
        f"### {title}",
        "",
        f"{total} samples at {RATE}/s while holding the interpreter "
        f"({total / RATE:.1f} s of the process's time).",
        "",
        "| function | with callees % | itself % |",
        "|---|---|---|",
    ]
    for function, samples in inclusive.most_common(top):
        share = 100 * samples / max(1, total)
        lines.append(f"| `{function}` | {share:.1f} | {100 * own[function] / max(1, total):.1f} |")
    return "\n".join(lines) + "\n"


def _function(frame: str) -> str:
    """`name (path/to/module.py:line)` as `name (module.py)`: one entry per function."""
    name, _, where = frame.partition(" (")
    module = where.rsplit(":", 1)[0].rsplit("/", 1)[-1]
    return f"{name} ({module})" if module else name
