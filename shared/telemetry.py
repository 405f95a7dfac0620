"""OpenTelemetry: a tracer provider per process from the standard ``OTEL_*`` variables, the
instrumentations that fit, and the W3C trace context every job carries.

Nothing is traced unless an exporter is configured (docs/design.md §7): ``start_tracing`` then
returns ``None``, no library is instrumented and the services make no spans. A job still gets
a trace context when it is submitted (``job_trace``), so its logs carry a trace id.

With an exporter, the SDK reads the rest of the ``OTEL_*`` variables itself: the sampler
(``OTEL_TRACES_SAMPLER``, ``_ARG``), the resource (``OTEL_RESOURCE_ATTRIBUTES``,
``OTEL_SERVICE_NAME``; ``jobq-<service>`` when neither names the service), the exporter's
endpoint, headers and timeouts, the batch processor's delays.
"""

from __future__ import annotations

import asyncio
import contextvars
import os
from collections.abc import Coroutine, Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from opentelemetry import trace
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter
from opentelemetry.sdk.trace.id_generator import RandomIdGenerator
from opentelemetry.sdk.trace.sampling import Decision, Sampler, SamplingResult
from opentelemetry.trace import Span, SpanContext, SpanKind
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from shared.errors import ConfigError

if TYPE_CHECKING:
    from opentelemetry.context import Context
    from opentelemetry.trace import Link
    from opentelemetry.util.types import Attributes

_propagator = TraceContextTextMapPropagator()
_ids = RandomIdGenerator()
T = TypeVar("T")

#: ``OTEL_TRACES_EXPORTER`` values jobq can honour (the OTLP exporter installed is HTTP/protobuf).
EXPORTERS = ("otlp", "console", "none")


def exporters(env: Mapping[str, str] = os.environ) -> list[str]:
    """The exporters the environment asks for: ``OTEL_TRACES_EXPORTER`` (a comma-separated
    list), else ``otlp`` if an OTLP endpoint is set, else none; none at all when
    ``OTEL_SDK_DISABLED`` is true. (The specification's default is ``otlp`` to localhost;
    jobq exports nothing until told where to.)"""
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return []
    named = env.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if not named:
        endpoint = env.get("OTEL_EXPORTER_OTLP_ENDPOINT") or env.get(
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"
        )
        named = "otlp" if endpoint else "none"
    kinds = [k.strip() for k in named.split(",") if k.strip()]
    unknown = [k for k in kinds if k not in EXPORTERS]
    if unknown:
        raise ConfigError(
            f"OTEL_TRACES_EXPORTER={named}: jobq exports traces with {', '.join(EXPORTERS)}"
        )
    protocol = env.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or env.get(
        "OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"
    )
    if "otlp" in kinds and protocol != "http/protobuf":
        raise ConfigError(
            f"OTEL_EXPORTER_OTLP_PROTOCOL={protocol}: jobq sends OTLP over http/protobuf"
            " (a collector's port 4318); unset it or set http/protobuf"
        )
    return [k for k in kinds if k != "none"]


def exporting(env: Mapping[str, str] = os.environ) -> bool:
    """Whether this process exports spans (and so makes any)."""
    return bool(exporters(env))


def start_tracing(
    service: str, *, consumer: bool = False, env: Mapping[str, str] = os.environ
) -> TracerProvider | None:
    """This process's tracer provider, with its libraries instrumented, if spans are exported;
    ``None`` otherwise (then nothing is instrumented: no span costs anything on the hot path).

    asyncpg is instrumented in every service: its statements, raw (``shared.db.raw``) or
    SQLAlchemy's, become spans under the request, attempt or tick that runs them. aio-pika's
    instrumentation fits only a consumer (``consumer=True``, the worker): it makes a span of
    each delivery, a child of the context its ticket's headers carry. Its publish span never
    fires, because tickets are written as frames past ``Exchange.publish``
    (``shared.frames``); ``shared.publish_spans`` makes those spans instead.
    """
    kinds = exporters(env)
    if not kinds:
        return None
    provider = make_tracer_provider(service, kinds)
    from opentelemetry.instrumentation.asyncpg import AsyncPGInstrumentor

    AsyncPGInstrumentor().instrument(tracer_provider=provider)  # type: ignore[no-untyped-call]
    if consumer:
        from opentelemetry.instrumentation.aio_pika import AioPikaInstrumentor

        AioPikaInstrumentor().instrument(tracer_provider=provider)
    return provider


def make_tracer_provider(service: str, kinds: Sequence[str]) -> TracerProvider:
    """A provider named ``jobq-<service>`` unless the environment names the service, sampling as
    ``OTEL_TRACES_SAMPLER`` says, exporting to ``kinds`` in batches."""
    resource = Resource.create()
    if str(resource.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
        resource = resource.merge(Resource({SERVICE_NAME: f"jobq-{service}"}))
    provider = TracerProvider(resource=resource)  # the SDK reads OTEL_TRACES_SAMPLER itself
    provider.sampler = QueriesInSpans(provider.sampler)
    for kind in kinds:
        exporter: SpanExporter
        if kind == "otlp":
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            exporter = OTLPSpanExporter()
        else:
            exporter = ConsoleSpanExporter()
        provider.add_span_processor(BatchSpanProcessor(exporter))
    return provider


class QueriesInSpans(Sampler):
    """The configured sampler, except that a database statement made outside any span is
    dropped rather than made the root of a trace of its own.

    Those are the statements that serve many jobs at once, in loops no request or attempt
    runs: a worker's batched claim (one for the deliveries at hand) and heartbeat, the API's
    lease polls, start-up checks. Each would otherwise be a one-span trace, every few
    milliseconds under load.
    """

    def __init__(self, inner: Sampler) -> None:
        self.inner = inner

    def should_sample(
        self,
        parent_context: Context | None,
        trace_id: int,
        name: str,
        kind: SpanKind | None = None,
        attributes: Attributes = None,
        links: Sequence[Link] | None = None,
        trace_state: trace.TraceState | None = None,
    ) -> SamplingResult:
        if (
            kind is SpanKind.CLIENT
            and attributes
            and ("db.system" in attributes or "db.system.name" in attributes)
            and not trace.get_current_span(parent_context).get_span_context().is_valid
        ):
            return SamplingResult(Decision.DROP)
        return self.inner.should_sample(
            parent_context, trace_id, name, kind, attributes, links, trace_state
        )

    def get_description(self) -> str:
        return f"QueriesInSpans{{{self.inner.get_description()}}}"


def job_trace(
    span: Span, traceparent: str | None, tracestate: str | None
) -> tuple[str, str | None]:
    """The ``traceparent`` and ``tracestate`` a new job carries: those of ``span`` (the
    request's, when requests are traced); else a span id of its own in the trace the caller's
    headers name, with the caller's ``tracestate``, or in a new trace. Every job so has a
    trace id, even when no span is made."""
    own = span.get_span_context()
    if own.is_valid:
        return headers_of(own)
    caller = remote(traceparent, tracestate)
    if caller is None:
        return f"00-{_ids.generate_trace_id():032x}-{_ids.generate_span_id():016x}-00", None
    tp = f"00-{caller.trace_id:032x}-{_ids.generate_span_id():016x}-{int(caller.trace_flags):02x}"
    return tp, caller.trace_state.to_header() or None


def headers_of(ctx: SpanContext) -> tuple[str, str | None]:
    """The W3C ``traceparent`` and ``tracestate`` (``None`` if empty) naming ``ctx``."""
    traceparent = f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-{int(ctx.trace_flags):02x}"
    return traceparent, ctx.trace_state.to_header() or None


def trace_id_of(traceparent: str | None) -> str | None:
    """The trace id a ``traceparent`` names (its second field), unchecked: for logs."""
    return traceparent.split("-")[1] if traceparent and traceparent.count("-") == 3 else None


def traceparent_of(span: Span) -> str | None:
    """The W3C ``traceparent`` naming ``span``, or ``None`` if it is not valid."""
    ctx = span.get_span_context()
    return headers_of(ctx)[0] if ctx.is_valid else None


def remote(traceparent: str | None, tracestate: str | None = None) -> SpanContext | None:
    """The span context W3C headers name, ``None`` if absent or invalid (an invalid or
    oversized ``tracestate`` is dropped, as the W3C propagator does)."""
    if not traceparent:
        return None
    carrier = {"traceparent": traceparent}
    if tracestate:
        carrier["tracestate"] = tracestate
    ctx = trace.get_current_span(_propagator.extract(carrier)).get_span_context()
    return ctx if ctx.is_valid else None


def context_from(traceparent: str | None, tracestate: str | None = None) -> Context | None:
    """The parent context W3C headers name (``None`` if absent or invalid)."""
    ctx = remote(traceparent, tracestate)
    return None if ctx is None else trace.set_span_in_context(trace.NonRecordingSpan(ctx))


def in_background(work: Coroutine[Any, Any, T]) -> asyncio.Task[T]:
    """A task for work that serves many jobs over time (a poll loop, marks for a batch of
    confirms), begun in a fresh context: no part of the trace, nor of the log context, of the
    request or attempt that happened to start it. (Its statements, outside any span, are no
    spans at all: ``QueriesInSpans``.)"""
    return asyncio.create_task(work, context=contextvars.Context())
