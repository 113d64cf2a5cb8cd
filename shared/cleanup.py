"""Removing what a deployment or a test run left on the shared services.

`python -m shared.cleanup broker` (`make clean-broker`) deletes every exchange and
queue named with TAXI_BROKER_PREFIX; `python -m shared.cleanup reset` (`make reset`)
also drops the database of TAXI_DATABASE_URL. Both print what they removed.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import uuid

import aio_pika
import psycopg
from aio_pika.abc import AbstractChannel, AbstractConnection
from aio_pika.exceptions import ChannelClosed

from shared import broker
from shared.migrate import drop_database
from shared.settings import Settings, SettingsError
from shared.topology import Topology


def unique_name(kind: str) -> str:
    """A name no other run uses, for a run's own database and broker prefix."""
    return f"taxi_{kind}_{uuid.uuid4().hex[:10]}"


async def delete_broker_objects(settings: Settings) -> list[str]:
    """Delete every exchange and queue this prefix owns (a gateway's own queues go with
    its connection); return the names of those that existed."""
    topology = Topology(settings.broker_prefix)
    queues = topology.shared_queues
    removed: list[str] = []
    connection = await broker.connect_once(settings)
    async with connection:
        channel = await connection.channel()
        for name in queues:
            channel, existed = await _exists(connection, channel, name, queue=True)
            if existed:
                await channel.queue_delete(name)
                removed.append(f"queue {name}")
        for name in topology.exchanges:
            channel, existed = await _exists(connection, channel, name, queue=False)
            if existed:
                await channel.exchange_delete(name)
                removed.append(f"exchange {name}")
    return removed


async def _exists(
    connection: AbstractConnection, channel: AbstractChannel, name: str, *, queue: bool
) -> tuple[AbstractChannel, bool]:
    """A passive declare; the broker closes the channel when the name is unknown, so a
    fresh channel comes back with the answer."""
    try:
        if queue:
            await channel.declare_queue(name, passive=True)
        else:
            await channel.declare_exchange(name, passive=True)
    except ChannelClosed:
        return await connection.channel(), False
    return channel, True


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m shared.cleanup", description=__doc__)
    parser.add_argument(
        "what",
        choices=("broker", "reset"),
        help="broker: the prefix's exchanges and queues; reset: those and the database",
    )
    args = parser.parse_args()
    try:
        settings = Settings.from_env()
    except SettingsError as exc:
        sys.exit(f"configuration error: {exc}")
    try:
        removed = asyncio.run(delete_broker_objects(settings))
    except (OSError, aio_pika.exceptions.AMQPError) as exc:
        sys.exit(f"cannot reach RabbitMQ at TAXI_AMQP_URL: {exc!r}")
    for name in removed:
        print(f"removed {name}")
    print(f"broker prefix {settings.broker_prefix}: {len(removed)} exchanges and queues removed")
    if args.what == "reset":
        try:
            dropped = drop_database(settings.database_url)
        except psycopg.OperationalError as exc:
            sys.exit(f"cannot reach Postgres at TAXI_DATABASE_URL: {exc}".strip())
        state = "dropped" if dropped else "did not exist"
        print(f"database {settings.database_name}: {state}")


if __name__ == "__main__":
    main()
