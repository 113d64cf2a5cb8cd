"""A broker connection over the nodes of a cluster (TAXI_AMQP_URL lists several):
it starts on the first node that answers and, when its node is lost, goes on on
another, its consumers restored. The nodes here are two TCP relays in front of the
one real broker; cutting a relay is losing that node."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from urllib.parse import urlsplit

import aio_pika
import pytest

from shared import broker
from shared.settings import Settings
from tests.chaos.relay import Relay
from tools.cleanup import unique_name
from tools.processes import start_dispatcher, start_gateway


def node_urls(settings: Settings, ports: list[int]) -> str:
    parts = urlsplit(settings.amqp_urls[0])
    auth = f"{parts.username}:{parts.password}@" if parts.username else ""
    return ",".join(f"amqp://{auth}127.0.0.1:{port}{parts.path or '/'}" for port in ports)


@pytest.fixture
async def relays(settings: Settings) -> AsyncIterator[tuple[list[Relay], list[int]]]:
    parts = urlsplit(settings.amqp_urls[0])
    nodes = [Relay(parts.hostname or "127.0.0.1", parts.port or 5672) for _ in range(2)]
    ports = [await node.start() for node in nodes]
    yield nodes, ports
    for node in nodes:
        await node.cut()


async def test_the_first_node_that_answers_is_used(
    settings: Settings, relays: tuple[list[Relay], list[int]]
) -> None:
    nodes, ports = relays
    await nodes[0].cut()  # down before anyone connects

    connection = await broker.connect(
        replace(settings, amqp_url=node_urls(settings, ports)), "failover-test"
    )
    try:
        assert connection.connected.is_set()
        assert connection.url.port == ports[1]
    finally:
        await connection.close()


async def test_no_node_answering_fails_at_once(settings: Settings) -> None:
    nodes = [Relay("127.0.0.1", 1) for _ in range(2)]  # nothing listens on port 1
    ports = [await node.start() for node in nodes]
    for node in nodes:
        await node.cut()

    with pytest.raises(aio_pika.exceptions.AMQPConnectionError):
        await asyncio.wait_for(
            broker.connect(replace(settings, amqp_url=node_urls(settings, ports)), "x"), 10
        )


async def test_losing_the_node_moves_the_connection_and_its_consumer_to_another(
    settings: Settings, relays: tuple[list[Relay], list[int]]
) -> None:
    nodes, ports = relays
    connection = await broker.connect(
        replace(settings, amqp_url=node_urls(settings, ports)), "failover-test"
    )
    reconnected = asyncio.Event()
    connection.reconnect_callbacks.add(lambda *_: reconnected.set())
    received: asyncio.Queue[bytes] = asyncio.Queue()
    name = unique_name("failover")
    publisher = await aio_pika.connect(settings.amqp_urls[0])
    try:
        channel = await connection.channel()
        queue = await channel.declare_queue(name, exclusive=True)

        async def take(message: aio_pika.abc.AbstractIncomingMessage) -> None:
            received.put_nowait(message.body)

        await queue.consume(take, no_ack=True)
        sending = await publisher.channel()
        await sending.default_exchange.publish(aio_pika.Message(b"before"), name)
        assert await asyncio.wait_for(received.get(), 10) == b"before"

        await nodes[0].cut()
        await asyncio.wait_for(reconnected.wait(), 15)
        # The exclusive queue went with the lost connection; the new one declared it
        # again before saying it was back.
        await sending.default_exchange.publish(aio_pika.Message(b"after"), name)

        assert await asyncio.wait_for(received.get(), 10) == b"after"
        assert connection.url.port == ports[1]
    finally:
        await connection.close()
        await publisher.close()


async def test_a_process_that_loses_its_node_says_so_in_two_lines_without_tracebacks(
    isolated_settings: Settings, relays: tuple[list[Relay], list[int]], tmp_path: Path
) -> None:
    """What an operator's console shows when a node goes: for each process one WARNING
    naming the node lost and one INFO naming the node it now uses; no library traceback,
    no ERROR."""
    nodes, ports = relays
    on_nodes = replace(isolated_settings, amqp_url=node_urls(isolated_settings, ports))
    gateway, _ = await asyncio.to_thread(start_gateway, on_nodes, tmp_path)
    worker = await asyncio.to_thread(start_dispatcher, on_nodes, tmp_path / "dispatcher.log")
    processes = [gateway, worker]
    try:
        before = {process.pid: len(process.log()) for process in processes}
        await nodes[0].cut()
        for process in processes:
            await asyncio.to_thread(process.wait_for_log, "broker connection restored")
        for process in processes:
            lines = process.log()[before[process.pid] :].splitlines()
            lost = [line for line in lines if "broker node lost" in line]
            moved = [line for line in lines if "broker connection restored" in line]
            assert len(lost) == 1 and "level=WARNING" in lost[0], lines
            assert f":{ports[0]}/" in lost[0] and "guest@" not in lost[0], lines
            assert len(moved) == 1 and "level=INFO" in moved[0], lines
            assert f":{ports[1]}/" in moved[0], lines
            assert not [line for line in lines if "Traceback" in line], lines
            assert not [line for line in lines if "level=ERROR" in line], lines
    finally:
        for process in processes:
            process.stop()
