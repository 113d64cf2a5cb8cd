"""Traces (OpenTelemetry): one trace per command, from the gateway's receipt of the frame
to its write to each socket, off unless the standard variables turn it on.

On when `OTEL_TRACES_EXPORTER` names an exporter (`otlp`, `console`, or any installed
one by its entry point name) and `OTEL_SDK_DISABLED` is not true; everything else is the
SDK's own environment configuration (`OTEL_SERVICE_NAME`, `OTEL_RESOURCE_ATTRIBUTES`,
`OTEL_EXPORTER_OTLP_ENDPOINT` and the rest of `OTEL_EXPORTER_OTLP_*`,
`OTEL_TRACES_SAMPLER`, `OTEL_BSP_*`, `OTEL_PROPAGATORS`). `otlp` is OTLP over HTTP
(protobuf), the protocol the specification makes the default.

Decided once at start-up (`configure`): the hot paths test `enabled`, a plain bool,
and with tracing off they create no span and inject no header.

The trace context travels in AMQP headers (W3C `traceparent`): the gateway puts it on
the command, the worker on each notification it publishes after the command, and the
gateway's socket writes join the trace from there. Statements (asyncpg's
instrumentation) are recorded only inside a command's trace: background jobs (the outbox
relay, timeouts, pruning) start no traces of their own.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, MutableMapping
from contextlib import contextmanager
from importlib.metadata import entry_points
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.context import Context
from opentelemetry.trace import Span, SpanKind, Tracer

log = logging.getLogger(__name__)

# Set by `configure`; never changes afterwards.
enabled = False

_tracer: Tracer = trace.NoOpTracer()

# The `otlp` exporter's protocols and the exporter entry point of each.
_OTLP = {"http/protobuf": "otlp_proto_http", "grpc": "otlp_proto_grpc"}


class TracingUnavailable(Exception):
    """`OTEL_TRACES_EXPORTER` names an exporter that is not installed."""


def requested() -> bool:
    if os.environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    return bool(_exporter_names())


def _exporter_names() -> list[str]:
    raw = os.environ.get("OTEL_TRACES_EXPORTER", "")
    return [name.strip() for name in raw.split(",") if name.strip() and name.strip() != "none"]


def configure(service: str) -> bool:
    """Start tracing if the environment asks for it; True if it did. `service` names the
    process when `OTEL_SERVICE_NAME` does not."""
    global enabled, _tracer
    if not requested():
        return False
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor
    from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ParentBased

    attributes = {} if os.environ.get("OTEL_SERVICE_NAME") else {SERVICE_NAME: f"taxi-{service}"}
    resource = Resource.create(attributes)
    # The sampler from OTEL_TRACES_SAMPLER (parent-based, always on, by default).
    provider = TracerProvider(resource=resource)
    # Statements only within a trace already under way (parent-based, never a root).
    statements = TracerProvider(resource=resource, sampler=ParentBased(ALWAYS_OFF))
    for name in _exporter_names():
        processor = BatchSpanProcessor(_exporter(name))
        provider.add_span_processor(processor)
        statements.add_span_processor(processor)
    trace.set_tracer_provider(provider)
    _tracer = provider.get_tracer("taxi")
    from opentelemetry.instrumentation.asyncpg import AsyncPGInstrumentor

    AsyncPGInstrumentor().instrument(tracer_provider=statements)  # type: ignore[no-untyped-call]
    # Every line written while a span is current names its trace.
    for handler in logging.getLogger().handlers:
        handler.addFilter(TraceIds())
    enabled = True
    log.info("traces on exporters=%s", ",".join(_exporter_names()))
    return True


def _exporter(name: str) -> Any:
    if name == "otlp":
        protocol = os.environ.get(
            "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
            os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
        )
        name = _OTLP.get(protocol, protocol)
    found = entry_points(group="opentelemetry_traces_exporter", name=name)
    if not found:
        raise TracingUnavailable(
            f"OTEL_TRACES_EXPORTER: no span exporter {name!r} is installed "
            "(otlp over http/protobuf and console are)"
        )
    return next(iter(found)).load()()


# The gateway's and the worker's spans. Callers test `enabled` first: with tracing off
# none of these is called.


@contextmanager
def span(
    name: str,
    kind: SpanKind = SpanKind.INTERNAL,
    parent: Context | None = None,
    attributes: dict[str, str | int] | None = None,
) -> Iterator[Span]:
    with _tracer.start_as_current_span(
        name, context=parent, kind=kind, attributes=attributes
    ) as current:
        yield current


def inject(headers: MutableMapping[str, Any]) -> None:
    """The current trace context into a message's headers (`traceparent`)."""
    propagate.inject(headers)


def extract(headers: Any) -> Context | None:
    """The trace context a message's headers carry, or None if they carry none."""
    if not headers or "traceparent" not in headers:
        return None
    return propagate.extract({k: str(v) for k, v in headers.items()})


def current_context() -> Context:
    return otel_context.get_current()


class TraceIds(logging.Filter):
    """Appends `trace_id=...` to a line written while a span is current."""

    def filter(self, record: logging.LogRecord) -> bool:
        found = trace.get_current_span().get_span_context()
        # Once per line, however many handlers write it.
        if found.is_valid and not getattr(record, "trace_id", None):
            trace_id = f"{found.trace_id:032x}"
            setattr(record, "trace_id", trace_id)  # noqa: B010
            record.msg = f"{record.msg} trace_id={trace_id}"
        return True
