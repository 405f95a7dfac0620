"""Every job carries a trace id, whether or not the API makes spans."""

from __future__ import annotations

import re

from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider

from shared.telemetry import job_traceparent, traceparent_of

TRACEPARENT = re.compile(r"00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")
CALLER = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


def test_a_traced_request_gives_the_job_its_span() -> None:
    with TracerProvider().get_tracer("t").start_as_current_span("request") as span:
        assert job_traceparent(span, CALLER) == traceparent_of(span)


def test_untraced_the_job_joins_the_callers_trace_with_a_span_id_of_its_own() -> None:
    tp = job_traceparent(trace.INVALID_SPAN, CALLER)
    match = TRACEPARENT.fullmatch(tp)
    assert match is not None
    assert match[1] == "0af7651916cd43dd8448eb211c80319c"
    assert match[2] != "b7ad6b7169203331"
    assert match[3] == "01"


def test_untraced_and_with_no_valid_caller_the_job_starts_a_trace() -> None:
    seen = set()
    for header in (None, "", "garbage", "00-" + "0" * 32 + "-" + "0" * 16 + "-01"):
        match = TRACEPARENT.fullmatch(job_traceparent(trace.INVALID_SPAN, header))
        assert match is not None
        assert match[1] != "0" * 32
        assert match[3] == "00"
        seen.add(match[1])
    assert len(seen) == 4
