"""The idle scenario: thousands of connected users doing nothing; what each one costs."""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any

import psutil

from bench.load import Load
from bench.resources import rabbitmq_memory_mb
from bench.system import LocalSystem


async def idle(args: argparse.Namespace) -> dict[str, Any]:
    if args.url:
        raise SystemExit("the idle scenario measures the gateway's memory: run it without --url")
    async with LocalSystem(workers=args.workers) as system:
        gateway = psutil.Process(system.pids()["gateway"][0])
        load = Load(system.base_url, drivers=args.drivers, riders=args.riders, racers=0)
        users = args.drivers + args.riders
        rss_before = gateway.memory_info().rss
        broker_before = rabbitmq_memory_mb()
        print(f"signing up and connecting {users} users", file=sys.stderr)
        await load.prepare()
        print(f"{users} users connected; idling for {args.seconds:.0f}s", file=sys.stderr)
        await asyncio.sleep(args.seconds)  # the scenario is idleness itself
        rss_after = gateway.memory_info().rss
        broker_after = rabbitmq_memory_mb()
        closes = load.seen.socket_closes
        await load.close()
    per_connection_kb = (rss_after - rss_before) / users / 1024
    per_user_kb = (
        (broker_after - broker_before) * 1024 / users
        if broker_before is not None and broker_after is not None
        else None
    )
    return {
        "scenario": "idle",
        "parameters": {"users": users, "seconds": args.seconds},
        "idle": {
            "connected users": users,
            "gateway RSS before (MB)": round(rss_before / 2**20, 1),
            "gateway RSS after (MB)": round(rss_after / 2**20, 1),
            "gateway KB per connection": round(per_connection_kb, 1),
            "RabbitMQ memory before (MB)": broker_before,
            "RabbitMQ memory after (MB)": broker_after,
            "RabbitMQ KB per connected user": round(per_user_kb, 1) if per_user_kb else None,
            "socket closes": closes,
        },
    }
