"""Removing what a deployment or a test run left on the shared services.

`python -m tools.cleanup broker` (`make clean-broker`) deletes every exchange and
queue named with TAXI_BROKER_PREFIX; `python -m tools.cleanup reset` (`make reset`)
also removes the photos of that database's users from TAXI_MEDIA_DIR and drops the
database of TAXI_DATABASE_URL. Both print what they removed.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import uuid
from pathlib import Path

import aio_pika
import psycopg
from aio_pika.abc import AbstractChannel, AbstractConnection
from aio_pika.exceptions import ChannelClosed

from shared import broker
from shared.migrate import drop_database, maintenance_url
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


# The URL path under which the gateway serves TAXI_MEDIA_DIR (gateway.web.media.MEDIA_URL).
_MEDIA_URL = "/media/"


def remove_photos(settings: Settings) -> int:
    """Delete the stored photos of the database's users; return how many were there.

    Only the files its users name go: another instance may share TAXI_MEDIA_DIR."""
    with psycopg.connect(maintenance_url(settings.database_url)) as conn:
        exists = conn.execute(
            "SELECT 1 FROM pg_database WHERE datname = %s", (settings.database_name,)
        ).fetchone()
    if exists is None:
        return 0
    try:
        with psycopg.connect(settings.database_url) as conn:
            rows = conn.execute("SELECT photo FROM users WHERE photo IS NOT NULL").fetchall()
    except psycopg.errors.UndefinedTable:
        return 0  # never migrated: no users
    root = Path(settings.media_dir).resolve()
    removed = 0
    for (url,) in rows:
        target = (root / str(url).removeprefix(_MEDIA_URL)).resolve()
        if target.is_relative_to(root) and target.is_file():
            target.unlink()
            removed += 1
    return removed


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m tools.cleanup", description=__doc__)
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
            photos = remove_photos(settings)
            print(f"media directory {settings.media_dir}: removed {photos} of its users' photos")
            dropped = drop_database(settings.database_url)
        except psycopg.OperationalError as exc:
            sys.exit(f"cannot reach Postgres at TAXI_DATABASE_URL: {exc}".strip())
        state = "dropped" if dropped else "did not exist"
        print(f"database {settings.database_name}: {state}")


if __name__ == "__main__":
    main()
