"""Every job carries a trace context, whether or not the API makes spans; spans are made only
when the ``OTEL_*`` environment says where they go."""

from __future__ import annotations

import re

import aio_pika
import asyncpg
import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.sampling import ALWAYS_ON, Decision
from opentelemetry.trace import SpanKind

from shared.errors import ConfigError
from shared.telemetry import (
    QueriesInSpans,
    context_from,
    exporters,
    job_trace,
    make_tracer_provider,
    start_tracing,
    traceparent_of,
)

TRACEPARENT = re.compile(r"00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")
CALLER = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
STATE = "rojo=00f067aa0ba902b7,congo=t61rcWkgMzE"


def test_a_traced_request_gives_the_job_its_span_and_tracestate() -> None:
    tracer = TracerProvider().get_tracer("t")
    with tracer.start_as_current_span("request", context=context_from(CALLER, STATE)) as span:
        assert job_trace(span, CALLER, STATE) == (traceparent_of(span), STATE)


def test_untraced_the_job_joins_the_callers_trace_with_a_span_id_of_its_own() -> None:
    tp, ts = job_trace(trace.INVALID_SPAN, CALLER, STATE)
    match = TRACEPARENT.fullmatch(tp)
    assert match is not None
    assert match[1] == "0af7651916cd43dd8448eb211c80319c"
    assert match[2] != "b7ad6b7169203331"
    assert match[3] == "01"
    assert ts == STATE


def test_a_tracestate_that_is_not_w3c_is_dropped_and_the_traceparent_kept() -> None:
    tp, ts = job_trace(trace.INVALID_SPAN, CALLER, "not a tracestate, at all")
    assert tp.split("-")[1] == CALLER.split("-")[1]
    assert ts is None


def test_untraced_and_with_no_valid_caller_the_job_starts_a_trace() -> None:
    seen = set()
    for header in (None, "", "garbage", "00-" + "0" * 32 + "-" + "0" * 16 + "-01"):
        tp, ts = job_trace(trace.INVALID_SPAN, header, STATE)
        match = TRACEPARENT.fullmatch(tp)
        assert match is not None
        assert match[1] != "0" * 32
        assert match[3] == "00"
        assert ts is None  # a tracestate means nothing without its traceparent
        seen.add(match[1])
    assert len(seen) == 4


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, []),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}, ["otlp"]),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://c:4318/v1/traces"}, ["otlp"]),
        ({"OTEL_TRACES_EXPORTER": "console"}, ["console"]),
        ({"OTEL_TRACES_EXPORTER": "otlp,console"}, ["otlp", "console"]),
        ({"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c"}, []),
        ({"OTEL_SDK_DISABLED": "true", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c"}, []),
        ({"OTEL_SDK_DISABLED": "false", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c"}, ["otlp"]),
    ],
)
def test_spans_are_exported_only_where_the_environment_says(
    env: dict[str, str], expected: list[str]
) -> None:
    assert exporters(env) == expected


@pytest.mark.parametrize(
    "env",
    [
        {"OTEL_TRACES_EXPORTER": "zipkin"},
        {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4317", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"},
    ],
)
def test_an_exporter_jobq_cannot_send_to_is_one_clear_error(env: dict[str, str]) -> None:
    with pytest.raises(ConfigError, match="OTEL_"):
        exporters(env)


def test_each_process_is_named_unless_the_environment_names_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("OTEL_SERVICE_NAME", raising=False)
    monkeypatch.setenv("OTEL_RESOURCE_ATTRIBUTES", "deployment.environment=test")
    resource = make_tracer_provider("worker", []).resource.attributes
    assert resource["service.name"] == "jobq-worker"
    assert resource["deployment.environment"] == "test"
    monkeypatch.setenv("OTEL_SERVICE_NAME", "billing-worker")
    assert make_tracer_provider("worker", []).resource.attributes["service.name"] == (
        "billing-worker"
    )
    monkeypatch.delenv("OTEL_SERVICE_NAME")
    monkeypatch.setenv("OTEL_RESOURCE_ATTRIBUTES", "service.name=from-attributes")
    assert make_tracer_provider("api", []).resource.attributes["service.name"] == (
        "from-attributes"
    )


def test_the_sampler_is_the_environments(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_TRACES_SAMPLER", "traceidratio")
    monkeypatch.setenv("OTEL_TRACES_SAMPLER_ARG", "0.25")
    sampler = make_tracer_provider("api", []).sampler
    assert sampler.get_description() == "QueriesInSpans{TraceIdRatioBased{0.25}}"


def test_a_query_outside_any_span_starts_no_trace_but_one_inside_is_sampled() -> None:
    sampler = QueriesInSpans(ALWAYS_ON)
    query = {"db.system": "postgresql", "db.statement": "UPDATE jobs …"}
    alone = sampler.should_sample(None, 1, "UPDATE", SpanKind.CLIENT, query)
    assert alone.decision is Decision.DROP
    inside = sampler.should_sample(context_from(CALLER), 1, "UPDATE", SpanKind.CLIENT, query)
    assert inside.decision is Decision.RECORD_AND_SAMPLE
    other = sampler.should_sample(None, 1, "POST /v1/jobs", SpanKind.SERVER, {})
    assert other.decision is Decision.RECORD_AND_SAMPLE


def test_with_no_exporter_nothing_is_instrumented() -> None:
    assert start_tracing("worker", consumer=True, env={}) is None
    assert (
        start_tracing("api", env={"OTEL_SDK_DISABLED": "true", "OTEL_TRACES_EXPORTER": "otlp"})
        is None
    )
    assert not hasattr(asyncpg.Connection.fetch, "__wrapped__")
    assert not hasattr(aio_pika.Queue.consume, "__wrapped__")
