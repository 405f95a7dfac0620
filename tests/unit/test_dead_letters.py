"""The pure parts of dead letters: cursors, who acts for which tenant, filters, and the record
a replay keeps to answer its idempotency key again."""

from __future__ import annotations

import base64
import struct
import uuid
from datetime import UTC, datetime

import pytest
from litestar.exceptions import PermissionDeniedException, ValidationException

from services.api.cursors import dead_cursor, job_cursor, parse_dead_cursor, parse_job_cursor
from services.api.dead_letters import acting_tenant, dead_filter
from services.api.schemas import DeadFilterIn
from services.api.tokens import Principal
from shared.db.dead_letters import DeadFilter, Replayed, ReplayOutcome, Skipped


def test_cursors_round_trip_and_refuse_what_the_api_never_handed_out() -> None:
    job_id = uuid.uuid4()
    died = datetime(2026, 12, 4, 1, 2, 3, 456789, tzinfo=UTC)
    assert parse_job_cursor(job_cursor(job_id)) == job_id
    assert parse_dead_cursor(dead_cursor(died, job_id)) == (died, job_id)
    assert len(dead_cursor(died, job_id)) == 32
    for bad in ("", "x", "A" * 22, job_cursor(job_id)):
        with pytest.raises(ValidationException):
            parse_dead_cursor(bad)
    for micros in (2**63 - 1, -(2**63)):  # beyond what a datetime holds
        raw = struct.pack(">q", micros) + job_id.bytes
        with pytest.raises(ValidationException):
            parse_dead_cursor(base64.urlsafe_b64encode(raw).decode())


def test_only_the_admin_scope_names_another_tenant() -> None:
    tenant = Principal("c", "acme", frozenset({"jobs:read"}))
    admin = Principal("c", "ops", frozenset({"jobs:read", "admin"}))
    assert acting_tenant(tenant, None) == acting_tenant(tenant, "acme") == "acme"
    with pytest.raises(PermissionDeniedException):
        acting_tenant(tenant, "rival")
    assert acting_tenant(admin, None) == "ops"
    assert acting_tenant(admin, "rival") == "rival"


def test_a_filter_needs_until_after_since_and_is_recorded_without_its_tenant() -> None:
    since, until = datetime(2026, 1, 1, tzinfo=UTC), datetime(2026, 1, 2, tzinfo=UTC)
    where = dead_filter("acme", DeadFilterIn(queue="q", error="E", since=since, until=until))
    assert where == DeadFilter("acme", "q", None, "E", since, until)
    assert where.described() == {"queue": "q", "error": "E", "since": since.isoformat(),
                                 "until": until.isoformat()}  # fmt: skip
    assert dead_filter("acme", None) == DeadFilter("acme")
    with pytest.raises(ValidationException):
        dead_filter("acme", DeadFilterIn(since=until, until=since))


def test_a_replays_result_answers_its_key_again_as_it_was() -> None:
    at = datetime(2026, 12, 4, tzinfo=UTC)
    first = ReplayOutcome(
        uuid.uuid4(), at, [Replayed(uuid.uuid4(), "a", "b", True)],
        [Skipped(uuid.uuid4(), "not_dead", "queued"), Skipped(uuid.uuid4(), "not_found")],
    )  # fmt: skip
    again = ReplayOutcome.of(first.action_id, at, first.result())
    assert (again.replayed, again.skipped) == (first.replayed, first.skipped)
    assert again.repeated
    assert again.tickets == []
