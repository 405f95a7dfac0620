"""An attempt as a span: a CONSUMER span in its job's trace, the child of the job's submit.

Every attempt is a child of the context the job carries from its submit (its stored
``traceparent`` and ``tracestate``), so all the attempts of a job, whichever workers ran them,
are spans of one trace. Two links say how an attempt came about: to the delivery of its ticket
(aio-pika's receive span, the child of the publish that sent the ticket: the API's, or the
scheduler's after a delay, a backoff, an expired lease or a lost ticket), and to the span of the
attempt whose failure it retries.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from opentelemetry.trace import Link, SpanKind, Status, StatusCode

from shared.telemetry import context_from, remote

if TYPE_CHECKING:
    from opentelemetry.trace import Span, SpanContext, Tracer

    from shared.db.leases import Claimed


@contextmanager
def attempt_span(tracer: Tracer, job: Claimed, delivered: SpanContext | None) -> Iterator[Span]:
    """The current span while ``job``'s attempt runs; ``delivered``: its delivery's span."""
    links = []
    if delivered is not None and delivered.is_valid:
        links.append(Link(delivered, {"jobq.link": "delivery"}))
    if (previous := remote(job.attempt_span)) is not None:
        links.append(Link(previous, {"jobq.link": "previous_attempt"}))
    with tracer.start_as_current_span(
        f"jobq.run {job.type}",
        context=context_from(job.traceparent, job.tracestate),
        kind=SpanKind.CONSUMER,
        links=links,
        attributes={
            "messaging.system": "rabbitmq",
            "messaging.operation.type": "process",
            "messaging.message.id": str(job.id),
            "jobq.job_id": str(job.id),
            "jobq.type": job.type,
            "jobq.attempt": job.attempts,
            "jobq.queue": job.queue,
            "jobq.tenant": job.tenant,
        },
    ) as span:
        yield span


def failed(span: Span, error: BaseException) -> None:
    """Mark the attempt's span with the failure its outcome records."""
    span.set_status(Status(StatusCode.ERROR, str(error)[:200]))
    span.set_attribute("error.type", type(error).__qualname__)
    span.record_exception(error)
