"""OpenTelemetry traces (docs/operations.md, "Traces").

With `OTEL_EXPORTER_OTLP_ENDPOINT` (or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) set, each server
process exports its spans by OTLP over HTTP: a server span per request, continuing the caller's
W3C `traceparent`, with a client span per database statement and per Client Registry call
beneath it; outgoing calls carry `traceparent` on. The other standard `OTEL_*` variables apply
(`OTEL_SERVICE_NAME`, `OTEL_TRACES_SAMPLER`, `OTEL_BSP_*`, `OTEL_EXPORTER_OTLP_HEADERS`).

Without an endpoint nothing is installed: the request path tests one boolean, and the database
connections use psycopg's own cursors.

Spans carry route templates, methods, statuses and SQL text (whose values are always bind
parameters), never a concrete path, a query string or a body: no PHI.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, MutableMapping
from typing import Any

from opentelemetry import context, trace
from opentelemetry.trace import Span, SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

PROPAGATOR = TraceContextTextMapPropagator()
tracer = trace.get_tracer("fhir_server")
# Longer SQL is cut in the span (a search with many parameters).
MAX_STATEMENT = 2000

_provider: Any = None  # the SDK's TracerProvider once configured


def enabled() -> bool:
    return _provider is not None


def configure(env: Mapping[str, str] = os.environ) -> bool:
    """Install the OTLP exporter when the environment names an endpoint; True if tracing is on.
    Once per process (the SDK allows one tracer provider)."""
    global _provider
    if _provider is not None:
        return True
    endpoint = env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or env.get(
        "OTEL_EXPORTER_OTLP_ENDPOINT"
    )
    if not endpoint or env.get("OTEL_SDK_DISABLED", "").lower() == "true":
        return False
    # the SDK and exporter load only when used
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    provider = TracerProvider(
        resource=Resource.create({"service.name": env.get("OTEL_SERVICE_NAME", "fhir-server")})
    )
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(provider)
    _provider = provider
    return True


def shutdown() -> None:
    """Export what is pending (the server is stopping)."""
    if _provider is not None:
        _provider.force_flush()


def start_request(method: str, traceparent: bytes, tracestate: bytes) -> tuple[Span, object]:
    """The server span of a request, current until `end_request`; its parent is the caller's
    span when `traceparent` names one."""
    carrier = {}
    if traceparent:
        carrier["traceparent"] = traceparent.decode("latin-1")
        if tracestate:
            carrier["tracestate"] = tracestate.decode("latin-1")
    parent = PROPAGATOR.extract(carrier)
    span = tracer.start_span(
        method, context=parent, kind=SpanKind.SERVER, attributes={"http.request.method": method}
    )
    return span, context.attach(trace.set_span_in_context(span, parent))


def end_request(span: Span, token: object, method: str, route: str, status: int) -> None:
    span.update_name(f"{method} {route}")
    span.set_attribute("http.route", route)
    span.set_attribute("http.response.status_code", status)
    if status >= 500:
        span.set_status(Status(StatusCode.ERROR))
    span.end()
    context.detach(token)  # type: ignore[arg-type]


def trace_id(span: Span) -> str:
    return format(span.get_span_context().trace_id, "032x")


def statement_span(sql: str) -> Any:
    """A client span around one database statement (a context manager)."""
    operation = sql.lstrip().split(None, 1)[0].upper() if sql.strip() else "SQL"
    return tracer.start_as_current_span(
        f"db {operation}",
        kind=SpanKind.CLIENT,
        attributes={
            "db.system": "postgresql",
            "db.operation.name": operation,
            "db.query.text": sql[:MAX_STATEMENT],
        },
    )


def inject(headers: MutableMapping[str, str]) -> MutableMapping[str, str]:
    """Add the current span's `traceparent` to an outgoing request's headers."""
    PROPAGATOR.inject(headers)
    return headers
