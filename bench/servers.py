"""The servers scenario: what the gateway's socket path costs under each server and
WebSocket implementation that keeps the same Starlette app (`bench.gateway_servers`).

One database and broker prefix for the whole run; `--drivers` drivers signed up once.
Then, for each server in turn (`--servers`, `--rounds` rounds, the order reversed every
other round so that neither end of a round is always the same server's), a fresh
gateway under that server alone, with no worker:

- one socket per driver is opened (the bare client of `bench.client`), and the
  gateway's resident memory per connection is taken from before and after;
- for `--seconds`, `--reports-per-second` location reports go out, the drivers in
  turn, evenly spaced (2,000 drivers at 2,000/s: each once a second, the gateway's
  own thinning), and `--echoes-per-second` echo frames on sockets in turn, each timed
  to its answer;
- the gateway's CPU (its process and any children: granian's worker) over that
  window, divided by the frames it received, is the CPU per frame; the load
  generator's own CPU is counted too, since it shares the machine.

Nothing here is the dispatch path: no worker runs, and a report's batch goes to a
fanout nobody listens to. It is the part that differs between servers: reading,
parsing and answering frames on thousands of sockets.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import sys
import time
from dataclasses import dataclass, field, replace
from typing import Any

import orjson
import psutil

from bench.city_model import SETTLE_SECONDS, SPARE_FILES
from bench.client import IdleSocket, close_all, open_sockets, raise_open_files_limit
from bench.load import Load
from bench.resources import Watched
from bench.stats import percentiles
from bench.system import LocalSystem
from tools.processes import ServiceProcess, free_port

# Where the drivers report from: a 10 km square around it.
CENTRE = (52.52, 13.405)


@dataclass
class Window:
    """What one server's measured window sent and saw."""

    reports: int = 0
    echoes_sent: int = 0
    echo_ms: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    sending: bool = True
    all_answered: asyncio.Event = field(default_factory=asyncio.Event)


class TimedSocket(IdleSocket):
    """A driver's socket that times each echo it asked for and keeps any error."""

    window: Window

    def __init__(self, host: str, path: str, window: Window) -> None:
        super().__init__(host, path, self._on_message)
        self.window = window

    def _on_message(self, payload: bytes) -> None:
        frame = orjson.loads(payload)
        kind = frame.get("type")
        if kind == "echo.message":
            sent = float(frame["data"])
            window = self.window
            window.echo_ms.append((time.perf_counter() - sent) * 1000)
            if not window.sending and len(window.echo_ms) >= window.echoes_sent:
                window.all_answered.set()
        elif kind == "error" and len(self.window.errors) < 10:
            self.window.errors.append(payload.decode(errors="replace"))


async def servers(args: argparse.Namespace) -> dict[str, Any]:
    raise_open_files_limit(args.drivers + SPARE_FILES)
    runs: list[dict[str, Any]] = []
    async with LocalSystem(workers=0) as system:
        load = Load(system.base_url, drivers=args.drivers, riders=0, racers=0)
        started = time.perf_counter()
        await load.sign_up()
        print(
            f"  {args.drivers} drivers signed up in {time.perf_counter() - started:.0f}s",
            file=sys.stderr,
        )
        tokens = [driver.token for driver in load.drivers]
        for round_number in range(args.rounds):
            order = args.servers if round_number % 2 == 0 else args.servers[::-1]
            for server in order:
                print(f"servers: round {round_number + 1}, {server}", file=sys.stderr)
                run = await measure_server(system, server, tokens, args)
                run["round"] = round_number + 1
                runs.append(run)
    return {
        "scenario": "servers",
        "parameters": {
            "drivers": args.drivers,
            "reports_per_second": args.reports_per_second,
            "echoes_per_second": args.echoes_per_second,
            "seconds": args.seconds,
            "rounds": args.rounds,
            "servers": args.servers,
        },
        "servers_runs": runs,
        "summary": summary(runs, args.servers),
    }


async def measure_server(
    system: LocalSystem, server: str, tokens: list[str], args: argparse.Namespace
) -> dict[str, Any]:
    settings = replace(system.settings, port=free_port(), metrics_port=free_port())
    log = system.logs / f"{server}-{settings.port}.log"
    gateway = ServiceProcess("bench.gateway_servers", settings, log, server).start()
    base_url = f"http://127.0.0.1:{settings.port}"
    try:
        await asyncio.to_thread(gateway.wait_until_ready, f"{base_url}/readyz")
        gateway_process = psutil.Process(gateway.pid)
        await asyncio.sleep(SETTLE_SECONDS)
        rss_before = _tree(gateway_process).rss()
        window = Window()
        opened = await open_sockets(
            base_url, tokens, lambda host, path, _: TimedSocket(host, path, window)
        )
        sockets: list[TimedSocket] = [s for s in opened if s is not None]
        await asyncio.sleep(SETTLE_SECONDS)
        rss_open = _tree(gateway_process).rss()
        generator = psutil.Process()
        cpu_before, own_before = _tree(gateway_process).cpu(), generator.cpu_times()
        started = time.perf_counter()
        await send_frames(sockets, window, args)
        await answered(window)
        elapsed = time.perf_counter() - started
        cpu, own_after = _tree(gateway_process).cpu() - cpu_before, generator.cpu_times()
        closed = sum(1 for s in sockets if s.closed.done())
        await close_all(sockets)
    finally:
        gateway.stop()
    frames = window.reports + window.echoes_sent
    own = (own_after.user + own_after.system) - (own_before.user + own_before.system)
    return {
        "server": server,
        "sockets_opened": len(sockets),
        "sockets_failed": len(tokens) - len(sockets),
        "sockets_closed_during_window": closed,
        "seconds": round(elapsed, 1),
        "reports": window.reports,
        "echoes_sent": window.echoes_sent,
        "echoes_answered": len(window.echo_ms),
        "frames_per_second": round(frames / args.seconds),
        "gateway_cpu_seconds": round(cpu, 2),
        "gateway_busy_percent": round(cpu / elapsed * 100, 1),
        "gateway_us_per_frame": round(cpu / frames * 1e6, 1) if frames else None,
        "load_generator_busy_percent": round(own / elapsed * 100, 1),
        "echo_ms": percentiles(window.echo_ms),
        "gateway_kb_per_connection": round(
            (rss_open - rss_before) / max(1, len(sockets)) / 1024, 1
        ),
        "errors": window.errors,
    }


async def send_frames(sockets: list[TimedSocket], window: Window, args: argparse.Namespace) -> None:
    """Reports from the sockets in turn at `reports_per_second`, and echoes on sockets
    in turn at `echoes_per_second`; late ticks catch up at once (open loop)."""
    if not sockets:
        return
    start = time.perf_counter()
    end = start + args.seconds
    reports = echoes = 0
    while (now := time.perf_counter()) < end:
        while reports < _due(args.reports_per_second, now - start):
            socket = sockets[reports % len(sockets)]
            lat, lng = _position(reports, len(sockets), now - start)
            frame = {"type": "update.location", "data": {"lat": lat, "lng": lng}}
            if socket.send_text(orjson.dumps(frame)):
                window.reports += 1
            reports += 1
        while echoes < _due(args.echoes_per_second, now - start):
            socket = sockets[(echoes * 7919) % len(sockets)]  # a prime stride: many sockets
            echo = {"type": "echo.message", "data": repr(time.perf_counter())}
            if socket.send_text(orjson.dumps(echo)):
                window.echoes_sent += 1
            echoes += 1
        next_tick = min(
            _next(args.reports_per_second, reports), _next(args.echoes_per_second, echoes)
        )
        await asyncio.sleep(max(0.002, start + next_tick - time.perf_counter()))


def _due(rate: float, elapsed: float) -> int:
    """How many of a frame sent `rate` a second, the first at once, are due by `elapsed`."""
    return int(elapsed * rate) + 1 if rate > 0 else 0


def _next(rate: float, sent: int) -> float:
    """When, from the start, the frame after `sent` of them is due."""
    return sent / rate if rate > 0 else float("inf")


async def answered(window: Window) -> None:
    """Until every echo sent has its answer, or SETTLE_SECONDS pass (it is lost then)."""
    window.sending = False
    if len(window.echo_ms) < window.echoes_sent:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(window.all_answered.wait(), SETTLE_SECONDS)


def _position(report: int, drivers: int, elapsed: float) -> tuple[float, float]:
    """Driver `report % drivers` somewhere on a 10 km square, moving slowly."""
    driver = report % drivers
    row, column = divmod(driver, 100)
    return (
        CENTRE[0] - 0.045 + (row % 100) * 0.0009 + elapsed * 1e-6,
        CENTRE[1] - 0.07 + column * 0.0014,
    )


def _tree(process: psutil.Process) -> Watched:
    """The gateway's process and its children (granian's worker), for CPU and memory."""
    return Watched([process, *process.children(recursive=True)])


def summary(runs: list[dict[str, Any]], names: list[str]) -> list[dict[str, Any]]:
    """Per server, the median over its rounds of each figure."""

    def median(values: list[float]) -> float:
        return round(statistics.median(values), 2)

    rows = []
    for name in names:
        own = [run for run in runs if run["server"] == name]
        if not own:
            continue

        rows.append(
            {
                "server": name,
                "rounds": len(own),
                "gateway_us_per_frame": median([r["gateway_us_per_frame"] or 0 for r in own]),
                "gateway_busy_percent": median([r["gateway_busy_percent"] for r in own]),
                "echo_p50_ms": median([r["echo_ms"]["p50"] or 0 for r in own]),
                "echo_p99_ms": median([r["echo_ms"]["p99"] or 0 for r in own]),
                "gateway_kb_per_connection": median([r["gateway_kb_per_connection"] for r in own]),
                "sockets_failed": sum(r["sockets_failed"] for r in own),
                "sockets_closed_during_window": sum(r["sockets_closed_during_window"] for r in own),
                "echoes_lost": sum(r["echoes_sent"] - r["echoes_answered"] for r in own),
            }
        )
    return rows


def servers_markdown(result: dict[str, Any]) -> str:
    p = result["parameters"]
    lines = [
        f"# Servers: {p['drivers']} driver sockets, {p['reports_per_second']:g} reports/s, "
        f"{p['echoes_per_second']:g} echoes/s, {p['seconds']:g} s a window, "
        f"{p['rounds']} round(s); medians over rounds",
        "",
        "| server | gateway us/frame | gateway busy % | echo p50 ms | echo p99 ms "
        "| KB/connection | sockets failed | closed | echoes lost |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in result["summary"]:
        lines.append(
            f"| {row['server']} | {row['gateway_us_per_frame']} | {row['gateway_busy_percent']} "
            f"| {row['echo_p50_ms']} | {row['echo_p99_ms']} | {row['gateway_kb_per_connection']} "
            f"| {row['sockets_failed']} | {row['sockets_closed_during_window']} "
            f"| {row['echoes_lost']} |"
        )
    lines += [
        "",
        "## Each window",
        "",
        "| round | server | frames/s | gateway us/frame | load generator busy % "
        "| echo p50 / p99 / max ms | errors |",
        "|---|---|---|---|---|---|---|",
    ]
    for run in result["servers_runs"]:
        echo = run["echo_ms"]
        lines.append(
            f"| {run['round']} | {run['server']} | {run['frames_per_second']} "
            f"| {run['gateway_us_per_frame']} | {run['load_generator_busy_percent']} "
            f"| {echo['p50']} / {echo['p99']} / {echo['max']} | {len(run['errors'])} |"
        )
    return "\n".join(lines) + "\n"
