"""PRODUCER spans for ticket publishes: one per job trace among the tickets of a batch.

Tickets are written as frames (``shared.frames``), past aio-pika's ``Exchange.publish``, so its
instrumentation never sees them; these spans stand in for it. A span belongs to one trace, and
a job's trace should show every publish of its tickets and how long the broker took to confirm
it (links cannot be followed backwards in a trace viewer). So a batch submit's tickets, which
share the request's trace, make one span, while single submits gathered into one statement, or
a scheduler sweep, make one span in each job's trace, started and ended together.

A span is the child of the span it is published under when that one is in the job's trace (the
request; the attempt, for a dead letter or a release); otherwise of the job's own context (its
submit), with a link to the span it was published under (the scheduler's tick; for gathered
submits, the request whose statement carried them). Each ticket's headers then carry its span's
context: ``traceparent``, and the job's ``tracestate``, which spans inherit from their parent.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import TYPE_CHECKING

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import Link, SpanKind, Status, StatusCode

from shared.telemetry import context_from, headers_of, trace_id_of

if TYPE_CHECKING:
    from opentelemetry.trace import Span, Tracer

    from shared.messaging import Ticket, Topology


class PublishSpans:
    """The spans of one publish; ``tickets`` are the tickets to send, each carrying its span's
    trace context. ``end`` with what became of each ticket."""

    def __init__(
        self, tracer: Tracer, topology: Topology, tickets: Sequence[Ticket], why: str | None
    ) -> None:
        """``why``: what made the publish (``jobq.publish.reason``), if the caller says."""
        current = trace.get_current_span().get_span_context()
        groups: dict[tuple[str | None, bool], list[int]] = {}
        for i, t in enumerate(tickets):
            groups.setdefault((trace_id_of(t.traceparent), t.dead), []).append(i)
        self._spans: list[tuple[Span, list[int]]] = []
        sent = list(tickets)
        for (trace_id, dead), members in groups.items():
            first = tickets[members[0]]
            exchange = topology.dlx if dead else topology.jobs_exchange
            links: list[Link] = []
            parent: Context | None = None  # the current span's (none: a root span)
            if trace_id is not None and (
                not current.is_valid or f"{current.trace_id:032x}" != trace_id
            ):
                parent = context_from(first.traceparent, first.tracestate) or Context()
                if current.is_valid:
                    links.append(Link(current, {"jobq.link": "published_under"}))
            span = tracer.start_span(
                f"publish {exchange}",
                context=parent,
                kind=SpanKind.PRODUCER,
                attributes=_attributes(exchange, [tickets[i] for i in members], why),
                links=links,
            )
            traceparent, tracestate = headers_of(span.get_span_context())
            for i in members:
                sent[i] = dataclasses.replace(
                    tickets[i], traceparent=traceparent, tracestate=tracestate
                )
            self._spans.append((span, members))
        self.tickets = sent

    def end(self, errors: Sequence[BaseException | None]) -> None:
        """End every span; one whose tickets were not all confirmed is an error."""
        for span, members in self._spans:
            failed = [e for i in members if (e := errors[i]) is not None]
            if failed:
                span.set_status(
                    Status(
                        StatusCode.ERROR,
                        f"{len(failed)} of {len(members)} not confirmed: {failed[0]!r}"[:200],
                    )
                )
                span.set_attribute("error.type", type(failed[0]).__qualname__)
            span.end()


def _attributes(exchange: str, tickets: list[Ticket], why: str | None) -> dict[str, str | int]:
    """Messaging semantic conventions, and the job when the span carries one ticket."""
    attributes: dict[str, str | int] = {
        "messaging.system": "rabbitmq",
        "messaging.operation.type": "send",
        "messaging.operation.name": "publish",
        "messaging.destination.name": exchange,
    }
    if len(tickets) == 1:
        attributes["messaging.message.id"] = str(tickets[0].job_id)
        attributes["messaging.rabbitmq.destination.routing_key"] = tickets[0].queue
    else:
        attributes["messaging.batch.message_count"] = len(tickets)
    if why:
        attributes["jobq.publish.reason"] = why
    return attributes
