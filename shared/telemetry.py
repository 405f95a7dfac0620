"""OpenTelemetry: one tracer provider per process, W3C trace context carried by jobs.

The submit's ``traceparent`` is stored on the job row and sent in every ticket's headers, so the
worker's span (and a scheduler re-publish) joins the trace begun by ``POST /v1/jobs``.
Exporters follow the standard ``OTEL_*`` variables: OTLP when an endpoint is set, the console
with ``OTEL_TRACES_EXPORTER=console``, nothing otherwise.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter
from opentelemetry.sdk.trace.id_generator import RandomIdGenerator
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ParentBased
from opentelemetry.trace import Span
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

_propagator = TraceContextTextMapPropagator()


def make_tracer_provider(service: str, env: Mapping[str, str] = os.environ) -> TracerProvider:
    """A provider for ``jobq-<service>`` exporting as the ``OTEL_*`` environment says.

    With no exporter, spans are not sampled: they still carry trace ids from the API to the
    worker (so every job has a ``trace_id``) but cost next to nothing on the hot path.
    """
    resource = Resource.create({"service.name": env.get("OTEL_SERVICE_NAME", f"jobq-{service}")})
    kind = _exporter(env)
    if kind is None:
        return TracerProvider(resource=resource, sampler=ParentBased(ALWAYS_OFF))
    exporter: SpanExporter
    if kind == "otlp":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        exporter = OTLPSpanExporter()
    else:
        exporter = ConsoleSpanExporter()
    provider = TracerProvider(resource=resource)
    provider.add_span_processor(BatchSpanProcessor(exporter))
    return provider


def _exporter(env: Mapping[str, str]) -> str | None:
    """Which exporter the ``OTEL_*`` environment asks for: ``otlp``, ``console`` or none."""
    if env.get("OTEL_EXPORTER_OTLP_ENDPOINT") or env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"):
        return "otlp"
    return "console" if env.get("OTEL_TRACES_EXPORTER") == "console" else None


def exporting(env: Mapping[str, str] = os.environ) -> bool:
    """Whether ``make_tracer_provider`` would export spans."""
    return _exporter(env) is not None


def job_traceparent(span: Span, header: str | None) -> str:
    """The ``traceparent`` a new job carries: that of ``span`` (the request's, when requests
    are traced); else a span id of its own in the trace the caller's ``traceparent`` header
    names, or in a new trace. Every job so has a trace id, even when no span is made."""
    own = traceparent_of(span)
    if own is not None:
        return own
    caller = trace.get_current_span(context_from(header)).get_span_context()
    trace_id = caller.trace_id if caller.is_valid else _ids.generate_trace_id()
    flags = int(caller.trace_flags) if caller.is_valid else 0
    return f"00-{trace_id:032x}-{_ids.generate_span_id():016x}-{flags:02x}"


_ids = RandomIdGenerator()


def trace_id_of(traceparent: str | None) -> str | None:
    """The trace id a ``traceparent`` names (its second field), unchecked: for logs."""
    return traceparent.split("-")[1] if traceparent and traceparent.count("-") == 3 else None


def traceparent_of(span: Span) -> str | None:
    """The W3C ``traceparent`` naming ``span``, or ``None`` if it is not recording/valid."""
    ctx = span.get_span_context()
    if not ctx.is_valid:
        return None
    return f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-{int(ctx.trace_flags):02x}"


def context_from(traceparent: str | None) -> Context | None:
    """The parent context a ``traceparent`` header names (``None`` if absent or invalid)."""
    if not traceparent:
        return None
    ctx = _propagator.extract({"traceparent": traceparent})
    return ctx or None
