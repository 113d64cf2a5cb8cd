"""The hops scenario: what one crossing between processes costs, in each process it
touches, at the rates a city makes them.

A trip is made of crossings: each command goes from a gateway through RabbitMQ to a
worker, each of the worker's statements is a round trip to Postgres, and each
notification goes from the worker through RabbitMQ to a gateway. This scenario
times those crossings alone, each as the system makes it, on the local RabbitMQ and
Postgres (`TAXI_AMQP_URL`, `TAXI_DATABASE_URL`), for `--seconds` at each rate of
`--hop-rates`:

- `wake-up`: the event loop woken at the rate and doing nothing else, the floor
  under every crossing below (and the window in which the broker's idle CPU is
  read, to be taken off its CPU in the others);
- `command`: a persistent message published with a confirm, mandatory, to the
  commands exchange and its replicated (quorum) queue, consumed by a consumer with a
  prefetch, acknowledged (`shared.broker`'s own declarations, under a prefix of
  this run's);
- `notification`: a transient message published with a confirm to the
  notifications exchange, routed by a user's key to an exclusive queue, consumed
  without acknowledgement (as a gateway takes its notifications);
- `position`: the same, published without a confirm (as a gateway sends a driver's
  position to the rider of their trip, and its batches of reports to the workers);
- `statement`: a prepared statement's round trip to Postgres (`SELECT $1`), the unit
  a command's transaction is made of (less than a real one costs: it reads and
  writes no table, and commits nothing).

The sender and the receiver are two threads of this process, each with its own
event loop; each thread's own CPU time from the first send until the last arrived
(not its connecting and declaring) is what it cost. RabbitMQ's CPU is read from its
process over that window, less what it used in the wake-up window of the same
length (it serves others on a shared machine); a statement's backend is its own, so
all its CPU is the hop's. Both are read in clock ticks of 10 ms, which is why each
rate runs for 20 s by default (a thousand statements of about 80 us are eight
ticks). Latency is from before the send to the receipt. Results:
`hops.json` and `hops.md`.
"""

from __future__ import annotations

import argparse
import asyncio
import threading
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import Any

import aio_pika
import asyncpg
import psutil
import uvloop

from bench.resources import Watched, rabbitmq_pids
from bench.stats import percentiles
from shared import broker
from shared.migrate import maintenance_url
from shared.settings import Settings
from shared.topology import Topology, command_key, user_key

HOPS = ("wake-up", "command", "notification", "position", "statement")
# A message of the size of a command or a notification frame.
BODY = b'{"type":"update.trip","request_id":"r-1","data":{"trip_id":"t-1","status":"ARRIVED"}}'
# The receiver is given this long, after the last send, to take the last message.
DRAIN_SECONDS = 5.0


class Side:
    """One thread's event loop, and the CPU its thread spent between `start_clock` and
    `stop_clock` (the crossings, not connecting or declaring)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.cpu_seconds = 0.0
        self.error: BaseException | None = None
        self._started = 0.0

    def run(self, work: Callable[[], Awaitable[None]]) -> threading.Thread:
        def main() -> None:
            with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
                runner.run(self._caught(work))

        thread = threading.Thread(target=main, name=self.name)
        thread.start()
        return thread

    def start_clock(self) -> None:
        self._started = time.thread_time()

    def stop_clock(self) -> None:
        self.cpu_seconds = time.thread_time() - self._started

    async def _caught(self, work: Callable[[], Awaitable[None]]) -> None:
        try:
            await work()
        except BaseException as exc:
            self.error = exc  # raised again in the main thread, by `measure`


async def paced(rate: float, seconds: float, send: Callable[[int], Awaitable[None]]) -> int:
    """`send(n)` at `rate` a second for `seconds`, each at its own time; how many."""
    count = max(1, round(rate * seconds))
    start = time.perf_counter()
    for n in range(count):
        delay = start + n / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        await send(n)
    return count


class Hop:
    """One crossing measured at one rate: a sender, a receiver and a server between.

    The window measured opens when the sender is about to send the first and closes
    once the receiver took the last (or DRAIN_SECONDS after the last was sent): the
    server's CPU is read at both ends, each thread's own at its own."""

    def __init__(
        self, settings: Settings, topology: Topology, rate: float, seconds: float, server: Watched
    ):
        self.settings = settings
        self.topology = topology
        self.rate = rate
        self.seconds = seconds
        self.server = server
        self.server_cpu = 0.0
        self.window_seconds = 0.0
        self.sent_at: dict[int, float] = {}
        self.latencies_ms: list[float] = []
        self.sent = 0
        # Set however the receiver's set-up ended, and however the sending ended, so
        # that neither thread waits for ever on the other.
        self.receiver_ready = threading.Event()
        self.sending_done = threading.Event()
        self.all_received = threading.Event()
        # The sender's and the receiver's threads both count.
        self._lock = threading.Lock()
        self._opened = 0.0

    def open_window(self) -> None:
        self._opened = time.perf_counter()
        self.server_cpu = self.server.cpu()

    def close_window(self) -> None:
        self.all_received.wait(DRAIN_SECONDS)
        self.server_cpu = self.server.cpu() - self.server_cpu
        self.window_seconds = time.perf_counter() - self._opened

    def note_sent(self, n: int) -> None:
        self.sent_at[n] = time.perf_counter()

    def received(self, n: int) -> None:
        with self._lock:
            self.latencies_ms.append((time.perf_counter() - self.sent_at.pop(n)) * 1000)
            self._check()

    def done_sending(self, count: int) -> None:
        with self._lock:
            self.sent = count
            self._check()

    def wait_until_done(self) -> None:
        """For a receiver: until the last was taken, or the sender gave up."""
        self.sending_done.wait()
        self.all_received.wait(DRAIN_SECONDS)

    def _check(self) -> None:
        if self.sent and len(self.latencies_ms) == self.sent:
            self.all_received.set()


async def _send_all(hop: Hop, sender: Side, send: Callable[[int], Awaitable[None]]) -> None:
    """The measured window: every crossing, sent at the hop's rate, until the last is in."""
    sender.start_clock()
    hop.open_window()
    try:
        hop.done_sending(await paced(hop.rate, hop.seconds, send))
        await asyncio.to_thread(hop.close_window)
    finally:
        hop.sending_done.set()
        sender.stop_clock()


async def _wake_ups(hop: Hop, sender: Side) -> None:
    async def nothing(n: int) -> None:
        hop.note_sent(n)
        hop.received(n)

    await _send_all(hop, sender, nothing)


async def _broker_sender(hop: Hop, sender: Side, *, command: bool, confirmed: bool = True) -> None:
    """A command (persistent, mandatory, to the replicated queue) or a notification
    (transient, to a user's key), published as the gateway and the worker do."""
    try:
        await asyncio.to_thread(hop.receiver_ready.wait)
        connection = await aio_pika.connect(hop.settings.amqp_urls[0])
        async with connection:
            channel = await connection.channel(publisher_confirms=confirmed)
            commands, notifications = await broker.declare_exchanges(channel, hop.topology)
            exchange = commands if command else notifications
            key = command_key("update.trip") if command else user_key(1)
            mode = (
                aio_pika.DeliveryMode.PERSISTENT
                if command
                else aio_pika.DeliveryMode.NOT_PERSISTENT
            )

            async def send(n: int) -> None:
                message = aio_pika.Message(BODY, message_id=str(n), delivery_mode=mode)
                hop.note_sent(n)
                if confirmed:
                    await broker.publish_confirmed(exchange, message, key, mandatory=command)
                else:
                    await exchange.publish(message, key, mandatory=False)

            await _send_all(hop, sender, send)
    finally:
        hop.sending_done.set()


async def _broker_receiver(hop: Hop, receiver: Side, *, command: bool) -> None:
    """As a worker takes commands (the replicated queue, a prefetch, each acknowledged)
    or a gateway its notifications (a queue of its own bound to the user's key, no
    acknowledgements)."""
    try:
        connection = await aio_pika.connect(hop.settings.amqp_urls[0])
        async with connection:
            channel = await connection.channel()
            commands, notifications = await broker.declare_exchanges(channel, hop.topology)
            if command:
                await channel.set_qos(prefetch_count=32)
                queue = await broker.declare_dispatcher_queue(channel, hop.topology, commands)
            else:
                queue = await channel.declare_queue(
                    exclusive=True, arguments=broker.gateway_queue_arguments()
                )
                await queue.bind(notifications, user_key(1))

            async def on_message(message: aio_pika.abc.AbstractIncomingMessage) -> None:
                hop.received(int(message.message_id or 0))
                if command:
                    await message.ack()

            await queue.consume(on_message, no_ack=not command)
            receiver.start_clock()
            hop.receiver_ready.set()
            await asyncio.to_thread(hop.wait_until_done)
            receiver.stop_clock()
    finally:
        hop.receiver_ready.set()


async def _statements(hop: Hop, sender: Side) -> None:
    # The server's maintenance database: a statement that reads no table needs no other.
    connection = await asyncpg.connect(maintenance_url(hop.settings.database_url))
    try:
        pid = int(await connection.fetchval("SELECT pg_backend_pid()"))
        # A backend of its own: all the CPU it uses in the window is this hop's.
        hop.server.processes.append(psutil.Process(pid))
        statement = await connection.prepare("SELECT $1::int")

        async def send(n: int) -> None:
            hop.note_sent(n)
            hop.received(await statement.fetchval(n))

        await _send_all(hop, sender, send)
    finally:
        await connection.close()


def measure(settings: Settings, name: str, rate: float, seconds: float) -> dict[str, Any]:
    """One crossing at one rate: its sender's, receiver's and server's CPU per unit (the
    server's in CPU seconds, for the caller to take its idle rate off) and latency."""
    topology = Topology(f"{settings.broker_prefix}-{uuid.uuid4().hex[:8]}")
    through_broker = SERVER_OF[name] == "RabbitMQ"
    # The broker in the wake-up's window too: its idle rate, to take off the others'.
    server = Watched([] if name == "statement" else [psutil.Process(p) for p in rabbitmq_pids()])
    hop = Hop(settings, topology, rate, seconds, server)
    sender, receiver = Side("sender"), Side("receiver")
    threads: list[threading.Thread] = []
    try:
        if name == "wake-up":
            threads.append(sender.run(lambda: _wake_ups(hop, sender)))
        elif name == "command":
            threads.append(receiver.run(lambda: _broker_receiver(hop, receiver, command=True)))
            threads.append(sender.run(lambda: _broker_sender(hop, sender, command=True)))
        elif name in ("notification", "position"):
            confirmed = name == "notification"
            threads.append(receiver.run(lambda: _broker_receiver(hop, receiver, command=False)))
            threads.append(
                sender.run(lambda: _broker_sender(hop, sender, command=False, confirmed=confirmed))
            )
        else:
            threads.append(sender.run(lambda: _statements(hop, sender)))
        for thread in threads:
            thread.join()
        for side in (receiver, sender):
            if side.error is not None:
                raise RuntimeError(f"hops: the {name} {side.name} failed") from side.error
    finally:
        if through_broker:
            asyncio.run(_remove(settings, topology))
    count = max(1, hop.sent)
    return {
        "hop": name,
        "rate": rate,
        "sent": hop.sent,
        "received": len(hop.latencies_ms),
        "seconds": round(hop.window_seconds, 2),
        "sender_us": round(sender.cpu_seconds / count * 1e6, 1),
        "receiver_us": round(receiver.cpu_seconds / count * 1e6, 1),
        "server_cpu_seconds": hop.server_cpu,
        "latency_ms": percentiles(hop.latencies_ms),
    }


async def _remove(settings: Settings, topology: Topology) -> None:
    """What a crossing through the broker declared: exchanges, and queues of its own
    that outlive a connection (a queue deleted that was not there is no error)."""
    connection = await aio_pika.connect(settings.amqp_urls[0])
    async with connection:
        channel = await connection.channel()
        for queue in topology.shared_queues:
            await channel.queue_delete(queue)
        for exchange in topology.exchanges:
            await channel.exchange_delete(exchange)


async def hops(args: argparse.Namespace) -> dict[str, Any]:
    """Every crossing at every rate; the broker's idle rate, from each rate's wake-up
    window, taken off its CPU in the crossings through it. One crossing at a time, off
    the event loop: Ctrl-C stops the run once the crossing under way has ended and
    removed what it declared."""
    prefix = f"bench-hops-{uuid.uuid4().hex[:8]}"
    settings = replace(Settings.from_env(), broker_prefix=prefix)
    rows = []
    for rate in args.hop_rates:
        idle_per_second = 0.0
        for name in HOPS:
            print(f"hops: {name} at {rate:g}/s for {args.seconds:g}s", flush=True)
            row = await asyncio.to_thread(measure, settings, name, rate, args.seconds)
            server_cpu = row.pop("server_cpu_seconds")
            if name == "wake-up":
                idle_per_second = server_cpu / row["seconds"]
                row["server_us"] = 0.0
            elif name == "statement":
                row["server_us"] = round(server_cpu / max(1, row["sent"]) * 1e6, 1)
            else:
                above_idle = max(0.0, server_cpu - idle_per_second * row["seconds"])
                row["server_us"] = round(above_idle / max(1, row["sent"]) * 1e6, 1)
            row["in_all_us"] = round(row["sender_us"] + row["receiver_us"] + row["server_us"], 1)
            rows.append(row)
    return {
        "scenario": "hops",
        "parameters": {"rates": args.hop_rates, "seconds": args.seconds, "broker_prefix": prefix},
        "hops": rows,
    }


SERVER_OF = {
    "wake-up": "-",
    "command": "RabbitMQ",
    "notification": "RabbitMQ",
    "position": "RabbitMQ",
    "statement": "Postgres",
}


def hops_markdown(result: dict[str, Any]) -> str:
    p = result["parameters"]
    lines = [
        f"# Hops: one crossing between processes, {p['seconds']:g} s at each rate",
        "",
        "CPU per crossing, in microseconds, of the thread that sent it, the thread that "
        "took it and the server between (above its idle rate); latency from before the "
        "send to the receipt.",
        "",
        "| crossing | rate/s | sent / received | sender us | receiver us | server us "
        "| in all us | latency p50 / p99 / max ms |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in result["hops"]:
        latency = row["latency_ms"]
        server = SERVER_OF[row["hop"]]
        lines.append(
            f"| {row['hop']} | {row['rate']:g} | {row['sent']} / {row['received']} "
            f"| {row['sender_us']} | {row['receiver_us']} "
            f"| {row['server_us']} ({server}) | {row['in_all_us']} "
            f"| {latency['p50']} / {latency['p99']} / {latency['max']} |"
        )
    return "\n".join(lines) + "\n"
