"""The idle scenario: thousands of connected users doing nothing; what each one costs
the gateway and the broker while connected, and what stays behind once they left.

For each size in `--connections` (default 5,000 and 20,000; half drivers, half
riders), on a fresh system: sign the users up, then measure the gateway's RSS and
the broker's memory (`rabbitmq-diagnostics memory_breakdown`, the median of three
samples) before any socket opens; open one socket per user (the bare client in
`bench.client`), idle `--seconds`, measure; close them all, wait until the gateway
holds none, measure again. With `--compare-with REV`, REV runs each size first,
then this tree: one system at a time, so the broker's memory is one system's.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import time
from typing import Any
from urllib.parse import urlsplit

import psutil

from bench.client import close_all, open_idle, raise_open_files_limit
from bench.load import Load
from bench.resources import rabbitmq_bindings, rabbitmq_memory_breakdown, rabbitmq_queues
from bench.revision import Worktree, this_tree_label
from bench.system import LocalSystem

# After sign-ups, and after the last socket closed: let the services settle first.
SETTLE_SECONDS = 5
RELEASE_TIMEOUT_SECONDS = 120
# How long to wait for the users' bindings to go once their sockets have, polling so.
UNBIND_TIMEOUT_SECONDS = 900
UNBIND_POLL_SECONDS = 5
# Files the load generator and the gateway hold besides the users' sockets (the
# gateway about 40: its pools, the broker, its log), with room to spare.
SPARE_FILES = 200


async def idle(args: argparse.Namespace) -> dict[str, Any]:
    if args.url:
        raise SystemExit("the idle scenario measures the gateway's memory: run it without --url")
    # The load generator holds one socket per user and so does the gateway: each needs
    # an open-files limit above the count. Where the limit cannot be raised that far
    # (a hard limit this process may not lift), a size is cut to what fits.
    limit = raise_open_files_limit(max(args.connections) + SPARE_FILES)
    print(f"open-files limit: {limit}", file=sys.stderr)
    fits = limit - SPARE_FILES
    for size in args.connections:
        if size > fits:
            print(
                f"{size} connections need an open-files limit above {size + SPARE_FILES}, "
                f"this process has {limit} and may not raise it: measuring {fits}",
                file=sys.stderr,
            )
    runs = []
    with contextlib.ExitStack() as stack:
        sides: list[tuple[str, str, Any]] = []
        if args.compare_with:
            worktree = stack.enter_context(Worktree(args.compare_with))
            sides.append(("before", worktree.label, worktree.path))
        sides.append(("after" if args.compare_with else "this tree", this_tree_label(), None))
        for requested in args.connections:
            for side, label, code in sides:
                run = await idle_once(args, min(requested, fits), side, label, code)
                run["users_requested"] = requested
                runs.append(run)
    return {
        "scenario": "idle",
        "parameters": {
            "connections": args.connections,
            "seconds": args.seconds,
            "workers": args.workers,
            "open_files_limit": limit,
            "broker_memory_samples": args.memory_samples,
            "client": "bench.client.IdleSocket (asyncio Protocol, no task per socket)",
        },
        "compare_with": args.compare_with,
        "runs": runs,
    }


async def idle_once(
    args: argparse.Namespace, users: int, side: str, label: str, code: Any
) -> dict[str, Any]:
    print(f"idle, {side} ({label}): {users} users", file=sys.stderr)
    async with LocalSystem(workers=args.workers, code=code, label=label) as system:
        prefix = f"{system.settings.broker_prefix}."
        gateway = psutil.Process(system.pids()["gateway"][0])
        port = urlsplit(system.base_url).port
        load = Load(system.base_url, drivers=users // 2, riders=users - users // 2, racers=0)
        started = time.perf_counter()
        await load.sign_up()
        tokens = [user.token for user in [*load.drivers, *load.riders]]
        print(f"  signed up in {time.perf_counter() - started:.0f}s", file=sys.stderr)
        settle = min(SETTLE_SECONDS, max(1.0, args.seconds))
        await asyncio.sleep(settle)
        before = await asyncio.to_thread(snapshot, gateway, prefix, args.memory_samples)
        started = time.perf_counter()
        sockets, failed = await open_idle(system.base_url, tokens)
        opened_in = time.perf_counter() - started
        print(
            f"  {len(sockets)} sockets open in {opened_in:.0f}s ({failed} failed); "
            f"idling for {args.seconds:g}s",
            file=sys.stderr,
        )
        await asyncio.sleep(args.seconds)  # the scenario is idleness itself
        connected = await asyncio.to_thread(snapshot, gateway, prefix, args.memory_samples)
        closed_while_idle = sum(1 for s in sockets if s.closed.done())
        await close_all(sockets)
        released = await wait_released(gateway, port)
        unbinding = await wait_unbound(prefix, (before["queues"] or {}).get("bindings"))
        await asyncio.sleep(settle)
        disconnected = await asyncio.to_thread(snapshot, gateway, prefix, args.memory_samples)
    cleaned = await asyncio.to_thread(rabbitmq_memory_breakdown, args.memory_samples)
    opened = len(sockets) or 1
    steps = (before, connected, disconnected)
    return {
        "side": side,
        "revision": label,
        "users": users,
        "sockets_opened": len(sockets),
        "sockets_failed": failed,
        "seconds_to_open": round(opened_in, 1),
        "socket_closes_while_idle": closed_while_idle,
        "gateway_released_all_sockets": released,
        "unbinding": unbinding,
        "gateway": {
            "rss_mb": by_phase(steps, "gateway_rss"),
            "kb_per_connection": round(
                (connected["gateway_rss"] - before["gateway_rss"]) / opened / 1024, 1
            ),
        },
        "rabbitmq": {
            "objects_mb": by_phase(steps, "objects"),
            "allocated_mb": by_phase(steps, "allocated"),
            "total_mb": by_phase(steps, "total"),
            "objects_mb_after_clean_up": mb(cleaned["objects"]) if cleaned else None,
            "bytes_per_connected_user": per_user(before, connected, opened),
            "bytes_per_disconnected_user": per_user(before, disconnected, opened),
            "breakdown_delta_connected_bytes": breakdown_delta(before, connected),
            "breakdown_delta_disconnected_bytes": breakdown_delta(before, disconnected),
            "queues": {k: s["queues"] for k, s in zip(PHASES, steps, strict=True)},
            "queues_left_after_clean_up": system.queues_left,
        },
    }


PHASES = ("before", "connected", "disconnected")


def by_phase(steps: tuple[dict[str, Any], ...], key: str) -> dict[str, float | None]:
    return {phase: mb(step[key]) for phase, step in zip(PHASES, steps, strict=True)}


def snapshot(gateway: psutil.Process, prefix: str, samples: int) -> dict[str, Any]:
    breakdown = rabbitmq_memory_breakdown(samples) or {}
    queues = rabbitmq_queues(prefix)
    return {
        "gateway_rss": gateway.memory_info().rss,
        "objects": breakdown.get("objects"),
        "allocated": breakdown.get("allocated"),
        "total": breakdown.get("total"),
        "breakdown": breakdown,
        "queues": None
        if queues is None
        else {
            "all": len(queues),
            "durable": sum(1 for q in queues if q.get("durable")),
            "per_user": sum(1 for q in queues if str(q["name"]).startswith(f"{prefix}user.")),
            "memory_bytes": sum(int(q.get("memory") or 0) for q in queues),
            "bindings": rabbitmq_bindings(prefix),
        },
    }


def mb(value: int | None) -> float | None:
    return None if value is None else round(value / 2**20, 1)


def per_user(before: dict[str, Any], then: dict[str, Any], users: int) -> dict[str, float | None]:
    return {
        key: None
        if before[key] is None or then[key] is None
        else round((then[key] - before[key]) / users)
        for key in ("objects", "allocated", "total")
    }


def breakdown_delta(before: dict[str, Any], then: dict[str, Any]) -> dict[str, int]:
    """The categories that moved by more than 256 KB, largest first."""
    deltas = {
        name: then["breakdown"].get(name, 0) - value
        for name, value in before["breakdown"].items()
        if name not in ("allocated", "total")
    }
    return dict(
        sorted(((k, v) for k, v in deltas.items() if abs(v) > 2**18), key=lambda kv: -abs(kv[1]))
    )


async def wait_released(gateway: psutil.Process, port: int | None) -> bool:
    """Wait until the gateway holds no client socket on its port; whether it came to that."""
    deadline = time.monotonic() + RELEASE_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        held = await asyncio.to_thread(_client_sockets, gateway, port)
        if held == 0:
            return True
        await asyncio.sleep(1)
    return False


async def wait_unbound(prefix: str, at_start: int | None) -> dict[str, Any]:
    """Once the sockets are gone, their users' bindings may take a while to go too: wait
    until the bindings are back to what they were before any socket opened, or stop
    changing. How many there were when the gateway had closed the last socket, how
    many are left, and how long it took."""
    started = time.monotonic()
    first = last = await asyncio.to_thread(rabbitmq_bindings, prefix)
    if first is None or at_start is None:
        return {"when_sockets_closed": first, "left": first, "seconds": None}
    while last is not None and last > at_start:
        if time.monotonic() - started > UNBIND_TIMEOUT_SECONDS:
            break
        await asyncio.sleep(UNBIND_POLL_SECONDS)
        now = await asyncio.to_thread(rabbitmq_bindings, prefix)
        if now == last:  # not moving: what is left stays (queues of their own)
            break
        last = now
    return {
        "when_sockets_closed": first - at_start,
        "left": None if last is None else last - at_start,
        "seconds": round(time.monotonic() - started, 1),
    }


def _client_sockets(gateway: psutil.Process, port: int | None) -> int:
    return sum(
        1
        for c in gateway.net_connections(kind="tcp")
        if c.laddr and c.laddr.port == port and c.status == psutil.CONN_ESTABLISHED
    )


def idle_markdown(result: dict[str, Any]) -> str:
    runs = result["runs"]
    header = [f"{r['revision']} ({r['side']}), {r['users']:,}" for r in runs]

    def row(name: str, cell: Any) -> str:
        return f"| {name} | " + " | ".join(str(cell(r)) for r in runs) + " |"

    def kb(value: float | None) -> str:
        return "-" if value is None else f"{value / 1024:.2f}"

    def queues(phase: str) -> Any:
        def cell(r: dict[str, Any]) -> str:
            q = r["rabbitmq"]["queues"][phase]
            if q is None:
                return "-"
            return f"{q['all']} / {q['durable']} / {q['per_user']} / {q['bindings']}"

        return cell

    def queue_memory(r: dict[str, Any]) -> str:
        q = r["rabbitmq"]["queues"]
        if q["connected"] is None or q["disconnected"] is None:
            return "-"
        return " / ".join(f"{q[p]['memory_bytes'] / 2**20:.1f}" for p in PHASES[1:])

    lines = [
        "| measure | " + " | ".join(header) + " |",
        "|---|" + "---|" * len(runs),
        row("sockets open (failed)", lambda r: f"{r['sockets_opened']} ({r['sockets_failed']})"),
        row("socket closes while idle", lambda r: r["socket_closes_while_idle"]),
        row(
            "gateway RSS before / connected / disconnected (MB)",
            lambda r: " / ".join(str(v) for v in r["gateway"]["rss_mb"].values()),
        ),
        row("**gateway KB per connection**", lambda r: f"**{r['gateway']['kb_per_connection']}**"),
        row(
            "RabbitMQ queues, bindings, connections: before / connected / disconnected (MB)",
            lambda r: " / ".join(str(v) for v in r["rabbitmq"]["objects_mb"].values()),
        ),
        row(
            "**RabbitMQ KB per connected user**",
            lambda r: f"**{kb(r['rabbitmq']['bytes_per_connected_user']['objects'])}**",
        ),
        row(
            "**RabbitMQ KB per disconnected user**",
            lambda r: f"**{kb(r['rabbitmq']['bytes_per_disconnected_user']['objects'])}**",
        ),
        row("this run's queue processes, connected / disconnected (MB)", queue_memory),
        row("queues / durable / per-user / bindings, connected", queues("connected")),
        row("queues / durable / per-user / bindings, disconnected", queues("disconnected")),
        row(
            "user bindings left when the gateway had closed every socket, seconds until "
            "they were gone (or stopped changing)",
            lambda r: (
                f"{r['unbinding']['when_sockets_closed']}, {r['unbinding']['seconds']} s"
                if r.get("unbinding")
                else "-"
            ),
        ),
        row("queues left after clean-up", lambda r: r["rabbitmq"]["queues_left_after_clean_up"]),
    ]
    return "\n".join(lines) + "\n"
