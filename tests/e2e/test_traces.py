"""One command, one trace: from the gateway's receipt of the frame to its writes to the
sockets, across a real gateway and a real dispatcher process.

The processes are configured as an operator would (`OTEL_TRACES_EXPORTER=otlp`,
`OTEL_EXPORTER_OTLP_ENDPOINT`) and export over OTLP/HTTP to a small receiver in this
test: an in-memory exporter lives in one process, and this proves what an operator
gets, the standard variables, the exporter and the context carried between processes
in AMQP headers included.
"""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

from shared.settings import Settings
from tests.clients import about, receive_until, rider_and_driver, send
from tools.cleanup import delete_broker_objects
from tools.processes import ServiceProcess, start_dispatcher, start_gateway


@dataclass(frozen=True)
class Span:
    service: str
    name: str
    trace_id: str
    span_id: str
    parent_id: str


class Receiver:
    """Collects the spans POSTed to /v1/traces (OTLP/HTTP, protobuf)."""

    def __init__(self) -> None:
        self.spans: list[Span] = []
        self._arrived = threading.Condition()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.add(ExportTraceServiceRequest.FromString(body))
                answer = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, format: str, *args: Any) -> None:
                return None

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def add(self, request: ExportTraceServiceRequest) -> None:
        found = []
        for resource_spans in request.resource_spans:
            service = next(
                a.value.string_value
                for a in resource_spans.resource.attributes
                if a.key == "service.name"
            )
            for scope in resource_spans.scope_spans:
                found += [
                    Span(
                        service,
                        s.name,
                        s.trace_id.hex(),
                        s.span_id.hex(),
                        s.parent_span_id.hex(),
                    )
                    for s in scope.spans
                ]
        with self._arrived:
            self.spans += found
            self._arrived.notify_all()

    def wait_for(self, condition: Callable[[list[Span]], bool], timeout: float) -> list[Span]:
        with self._arrived:
            arrived = self._arrived.wait_for(lambda: condition(self.spans), timeout)
            assert arrived, f"spans not exported in {timeout}s: {self.spans}"
            return list(self.spans)

    @contextmanager
    def running(self) -> Iterator[Receiver]:
        thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        thread.start()
        try:
            yield self
        finally:
            self.server.shutdown()
            self.server.server_close()
            thread.join()


@dataclass
class TracedStack:
    base_url: str
    gateway: ServiceProcess
    dispatcher: ServiceProcess
    receiver: Receiver


@pytest.fixture
async def traced(
    settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[TracedStack]:
    own = replace(
        settings,
        broker_prefix=f"{settings.broker_prefix}-traces-{uuid.uuid4().hex[:6]}",
        log_level="DEBUG",
    )
    with Receiver().running() as receiver:
        # The processes inherit the environment (tools.processes).
        monkeypatch.setenv("OTEL_TRACES_EXPORTER", "otlp")
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint)
        # Exported within a tenth of a second, not the default five.
        monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "100")
        monkeypatch.delenv("OTEL_SERVICE_NAME", raising=False)
        dispatcher = await asyncio.to_thread(start_dispatcher, own, tmp_path / "dispatcher.log")
        try:
            gateway, base_url = await asyncio.to_thread(start_gateway, own, tmp_path)
            try:
                yield TracedStack(base_url, gateway, dispatcher, receiver)
            finally:
                await asyncio.to_thread(gateway.stop)
        finally:
            await asyncio.to_thread(dispatcher.stop)
            await delete_broker_objects(own)


async def test_one_accept_is_one_trace_from_the_frame_to_every_socket_it_reached(
    traced: TracedStack,
) -> None:
    async with (
        httpx.AsyncClient(base_url=traced.base_url, timeout=10) as http,
        rider_and_driver(http, traced.base_url) as (rider, driver, rider_ws, driver_ws),
    ):
        await send(
            rider_ws,
            {
                "type": "create.trip",
                "data": {"pick_up_address": "1 Trace St", "drop_off_address": "2 Trace St"},
            },
        )
        requested = await receive_until(
            rider_ws, lambda f: f["type"] in ("trip.requested", "error")
        )
        assert requested["type"] == "trip.requested", requested
        trip = requested["data"]
        trip_id = trip["id"]
        accept = {
            "id": trip_id,
            "pick_up_address": trip["pick_up_address"],
            "drop_off_address": trip["drop_off_address"],
            "status": "STARTED",
            "driver": driver.id,
            "rider": rider.id,
        }
        await send(driver_ws, {"type": "update.trip", "data": accept})
        await receive_until(rider_ws, about(trip_id, "trip.accepted"))
        await receive_until(driver_ws, about(trip_id, "trip.accepted"))

    def accept_written_twice(spans: list[Span]) -> bool:
        """Both writes of the accept arrived, and every span above them: each process
        exports its spans when they end, in batches of its own, so the gateway's
        writes may arrive before the worker's spans they descend from."""
        writes = [s for s in spans if s.name == "trip.accepted write"]
        if len(writes) < 2:
            return False
        by_id = {s.span_id: s for s in spans}
        for span in writes:
            while span.parent_id:
                if span.parent_id not in by_id:
                    return False
                span = by_id[span.parent_id]
        return True

    spans = await asyncio.to_thread(traced.receiver.wait_for, accept_written_twice, 30)
    receipt = next(s for s in spans if s.name == "receive update.trip")
    trace = [s for s in spans if s.trace_id == receipt.trace_id]
    by_id = {s.span_id: s for s in trace}

    def path(span: Span) -> list[str]:
        """The span's ancestors, each as service:name, from the root down."""
        names = []
        while True:
            names.insert(0, f"{span.service}:{span.name}")
            if not span.parent_id:
                return names
            assert span.parent_id in by_id, f"{span.name}'s parent is not in the trace"
            span = by_id[span.parent_id]

    chain = [
        "taxi-gateway:receive update.trip",
        "taxi-gateway:command.update.trip publish",
        "taxi-dispatcher:command.update.trip process",
    ]
    writes = [s for s in trace if s.name == "trip.accepted write"]
    assert len(writes) == 2, trace
    for write in writes:
        assert path(write) == [
            *chain,
            "taxi-dispatcher:notifications publish",
            "taxi-gateway:trip.accepted write",
        ]
    transaction = next(s for s in trace if s.name == "transaction")
    assert path(transaction) == [*chain, "taxi-dispatcher:transaction"]
    # The statements of the transaction (asyncpg's instrumentation) are in it.
    statements = [s for s in trace if s.parent_id == transaction.span_id]
    assert statements, trace
    # Background jobs run statements too, but start no trace of their own.
    assert all(s.trace_id in {x.trace_id for x in spans if not x.parent_id} for s in spans)
    roots = [s for s in spans if not s.parent_id]
    assert {s.name for s in roots} <= {"receive create.trip", "receive update.trip"}, roots

    # Every log line about the command names its trace.
    dispatcher_log = await asyncio.to_thread(traced.dispatcher.log)
    gateway_log = await asyncio.to_thread(traced.gateway.log)
    applied = [
        line
        for line in dispatcher_log.splitlines()
        if "command applied" in line
        and f"trip_id={trip_id}" in line
        and "event=trip.accepted" in line
    ]
    assert applied and all(f"trace_id={receipt.trace_id}" in line for line in applied), applied
    published = [
        line
        for line in gateway_log.splitlines()
        if "command published" in line and f"user_id={driver.id}" in line
    ]
    assert published and all(f"trace_id={receipt.trace_id}" in line for line in published)
