"""A publish is a span in the trace of each job it carries, and each ticket carries its span."""

from __future__ import annotations

import uuid

from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from shared.messaging import Ticket, Topology
from shared.publish_spans import PublishSpans
from shared.telemetry import remote

TOPOLOGY = Topology("jobq", "quorum", 10)
STATE = "rojo=00f067aa0ba902b7"


def traced() -> tuple[TracerProvider, InMemorySpanExporter]:
    spans = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(spans))
    return provider, spans


def ticket(trace: str, dead: bool = False) -> Ticket:
    return Ticket(
        uuid.uuid4(), "noop", 0, "default", 5, traceparent=f"00-{trace}-{'1' * 16}-01",
        tracestate=STATE, dead=dead,
    )  # fmt: skip


def test_tickets_of_one_trace_share_a_span_and_carry_its_context() -> None:
    provider, spans = traced()
    batch = [ticket("a" * 32) for _ in range(3)]
    publish = PublishSpans(provider.get_tracer("t"), TOPOLOGY, batch, None)
    publish.end([None, None, None])
    [span] = spans.get_finished_spans()
    assert (span.name, span.kind) == ("publish jobq.jobs", SpanKind.PRODUCER)
    assert span.attributes is not None
    assert span.attributes["messaging.batch.message_count"] == 3
    assert span.parent is not None
    assert f"{span.parent.span_id:016x}" == "1" * 16
    for sent in publish.tickets:
        ctx = remote(sent.traceparent, sent.tracestate)
        assert ctx is not None
        assert span.context is not None
        assert (ctx.trace_id, ctx.span_id) == (span.context.trace_id, span.context.span_id)
        assert sent.tracestate == STATE


def test_a_batch_of_several_traces_makes_a_span_in_each_linked_to_the_caller() -> None:
    provider, spans = traced()
    tracer = provider.get_tracer("t")
    batch = [ticket("a" * 32), ticket("b" * 32), ticket("b" * 32, dead=True)]
    with tracer.start_as_current_span("jobq.scheduler.tick") as tick:
        publish = PublishSpans(tracer, TOPOLOGY, batch, "due")
    publish.end([None, TimeoutError("no confirm"), None])
    made: dict[tuple[str, str], ReadableSpan] = {}
    for s in spans.get_finished_spans():
        if s.context is not None and s.kind is SpanKind.PRODUCER:
            made[(f"{s.context.trace_id:032x}", s.name)] = s
    assert set(made) == {
        ("a" * 32, "publish jobq.jobs"), ("b" * 32, "publish jobq.jobs"),
        ("b" * 32, "publish jobq.dlx"),
    }  # fmt: skip
    for span in made.values():
        [link] = span.links
        assert link.context.span_id == tick.get_span_context().span_id
        assert span.attributes is not None
        assert span.attributes["jobq.publish.reason"] == "due"
    assert made[("b" * 32, "publish jobq.jobs")].status.status_code is StatusCode.ERROR
    assert made[("a" * 32, "publish jobq.jobs")].status.status_code is StatusCode.UNSET


def test_published_under_a_span_of_the_jobs_trace_the_publish_is_its_child() -> None:
    provider, spans = traced()
    tracer = provider.get_tracer("t")
    with tracer.start_as_current_span("jobq.run noop") as attempt:
        own = f"{attempt.get_span_context().trace_id:032x}"
        PublishSpans(tracer, TOPOLOGY, [ticket(own, dead=True)], None).end([None])
    publish = next(s for s in spans.get_finished_spans() if s.kind is SpanKind.PRODUCER)
    assert publish.parent is not None
    assert publish.parent.span_id == attempt.get_span_context().span_id
    assert not publish.links
