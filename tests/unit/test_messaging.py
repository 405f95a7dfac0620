"""The ticket codec and the queue arguments each queue type gets."""

from __future__ import annotations

import uuid

import pytest

from shared.errors import DecodeError
from shared.ids import uuid7
from shared.messaging import Ticket, Topology, decode_ticket, encode_ticket, headers


def test_a_ticket_round_trips_with_ids_only() -> None:
    ticket = Ticket(uuid.uuid4(), "noop", 2, "default", 5)
    body = decode_ticket(encode_ticket(ticket))
    assert (body.job_id, body.type, body.attempt) == (ticket.job_id, "noop", 2)
    assert b"payload" not in encode_ticket(ticket)


@pytest.mark.parametrize(
    "body", [b"", b"not json", b"{}", b'{"job_id": "x", "type": "a", "attempt": 1}', b"[1]"]
)
def test_anything_but_a_ticket_is_a_decode_error(body: bytes) -> None:
    with pytest.raises(DecodeError):
        decode_ticket(body)


def test_quorum_queues_get_a_delivery_limit_and_safe_dead_lettering() -> None:
    args = Topology("jobq", "quorum", 7).queue_arguments()
    assert args == {
        "x-queue-type": "quorum",
        "x-dead-letter-exchange": "jobq.dlx",
        "x-delivery-limit": 7,
        "x-dead-letter-strategy": "at-least-once",
        "x-overflow": "reject-publish",
    }


def test_classic_queues_get_priorities() -> None:
    t = Topology("p", "classic", 7)
    assert t.queue_arguments()["x-max-priority"] == 9
    assert (t.jobs_exchange, t.dlx, t.dead_queue, t.queue_name("email")) == (
        "p.jobs", "p.dlx", "p.dead", "p.q.email",
    )  # fmt: skip


def test_uuid7_is_version_7_and_time_ordered() -> None:
    ids = [uuid7() for _ in range(1000)]
    assert all(i.version == 7 and i.variant == uuid.RFC_4122 for i in ids)
    assert [i.int >> 80 for i in ids] == sorted(i.int >> 80 for i in ids)


def test_a_ticket_says_in_its_headers_which_job_and_attempt_it_is_for() -> None:
    ticket = Ticket(
        uuid.uuid4(), "mail.send", 0, "email", 5, traceparent="00-" + "a" * 32 + "-" + "b" * 16 + "-01",
        tenant="acme", tracestate="rojo=00f067aa0ba902b7",
    )  # fmt: skip
    assert headers(ticket, str(ticket.job_id)) == {
        "x-jobq-job-id": str(ticket.job_id),
        "x-jobq-type": "mail.send",
        "x-jobq-tenant": "acme",
        "x-jobq-attempt": 1,
        "traceparent": ticket.traceparent,
        "tracestate": "rojo=00f067aa0ba902b7",
    }


def test_a_dead_letter_says_why_the_job_died_and_the_error_class() -> None:
    ticket = Ticket(
        uuid.uuid4(), "mail.send", 3, "email", 5, dead=True, tenant="acme",
        reason="SMTPError: 550 no such user", error_type="SMTPError",
    )  # fmt: skip
    h = headers(ticket, str(ticket.job_id))
    assert h["x-jobq-attempt"] == 3  # the last one made
    assert (h["x-jobq-reason"], h["x-jobq-error-type"], h["x-jobq-queue"]) == (
        "SMTPError: 550 no such user", "SMTPError", "email",
    )  # fmt: skip
