"""The dashboard's pure parts: a job's timeline, the queue rows, durations, trace links, CSRF
tokens and the trace URL setting."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

import pytest

from services.api.broker_stats import BrokerFigures
from services.api.ui.job import trace_link
from services.api.ui.overview import queue_rows
from services.api.ui.render import age
from services.api.ui.session import csrf_token
from services.api.ui.timeline import BAD, OK, describe, timeline
from shared.config import Settings
from shared.db.models import Queue
from shared.db.sweeps import QueueFigures
from shared.errors import ConfigError

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def job(**fields: Any) -> SimpleNamespace:
    base: dict[str, Any] = {
        "queue": "default", "priority": 5, "created_at": T0, "depends_on": None,
        "waiting_on": None, "on_dependency_failure": None, "errors": [], "started_at": None,
        "finished_at": None, "status": "queued", "attempts": 0, "progress": None,
    }  # fmt: skip
    return SimpleNamespace(**{**base, **fields})


def titles(j: SimpleNamespace) -> list[str]:
    return [e.title for e in timeline(j)]


def failed(n: int) -> dict[str, Any]:
    return {"type": "RuntimeError", "message": f"boom {n}", "attempt": n}


def test_a_job_that_succeeded_after_a_retry() -> None:
    j = job(
        errors=[failed(1)], attempts=2, status="succeeded",
        started_at=T0 + timedelta(seconds=2), finished_at=T0 + timedelta(seconds=3),
    )  # fmt: skip
    events = timeline(j)
    assert [e.title for e in events] == [
        "created", "attempt 1 failed", "attempt 2 started", "succeeded",
    ]  # fmt: skip
    assert events[1].detail == "RuntimeError: boom 1"
    assert events[1].tone == BAD
    assert events[-1].tone == OK


def test_a_dead_jobs_last_attempt_starts_before_its_error() -> None:
    j = job(errors=[failed(1), failed(2)], attempts=2, status="dead", started_at=T0, finished_at=T0)
    assert titles(j) == [
        "created", "attempt 1 failed", "attempt 2 started", "attempt 2 failed", "dead",
    ]  # fmt: skip


def test_a_replay_shows_where_the_attempts_start_again() -> None:
    j = job(errors=[failed(1), failed(2), failed(1)], attempts=1, status="retrying")
    assert titles(j) == [
        "created", "attempt 1 failed", "attempt 2 failed", "re-queued by hand", "attempt 1 failed",
    ]  # fmt: skip


def test_a_replayed_job_that_succeeded_shows_its_replay() -> None:
    j = job(errors=[failed(1), failed(2)], attempts=1, status="succeeded", started_at=T0,
            finished_at=T0)  # fmt: skip
    assert titles(j) == [
        "created", "attempt 1 failed", "attempt 2 failed", "re-queued by hand",
        "attempt 1 started", "succeeded",
    ]  # fmt: skip
    queued = job(errors=[failed(1)], attempts=0, status="queued")
    assert titles(queued) == ["created", "attempt 1 failed", "re-queued by hand"]
    retrying = job(errors=[failed(1)], attempts=1, status="retrying", started_at=T0)
    assert titles(retrying) == ["created", "attempt 1 started", "attempt 1 failed"]


def test_recorded_replays_name_who_made_them_and_a_retry_after_them_does_not() -> None:
    replay = SimpleNamespace(at=T0, actor="c-1", queue_before="default", queue_after="slow")
    j = job(errors=[failed(1), failed(1)], attempts=0, status="queued")
    events = timeline(j, [replay])
    assert [e.title for e in events] == [
        "created", "attempt 1 failed", "replayed", "attempt 1 failed", "re-queued by hand",
    ]  # fmt: skip
    assert events[2].detail == "by client c-1, into queue slow"
    assert events[2].at == T0


def test_dependencies_and_progress_are_shown() -> None:
    j = job(
        depends_on=[uuid.uuid4(), uuid.uuid4()], waiting_on=1, status="running", attempts=1,
        started_at=T0, progress={"fraction": 0.5, "message": "half way"},
    )  # fmt: skip
    events = timeline(j)
    assert events[1].detail == "2 jobs, 1 not finished (if one fails: cancel)"
    assert events[-1].title == "progress"
    assert events[-1].detail == "50% half way"


def test_an_error_of_any_shape_is_described() -> None:
    assert describe({"type": "LeaseExpired", "message": "gone"}) == "LeaseExpired: gone"
    assert describe({"message": "only"}) == "only"
    assert describe("text") == "text"


def test_queue_rows_fill_what_a_read_left_out() -> None:
    queues = [Queue(name="default", description="d"), Queue(name="idle")]
    figures = [QueueFigures("default", 3, 0, 0, 1, 12.5, 0)]
    rows = queue_rows(
        queues,
        {"default": {"queued": 3, "dead": 2}},
        figures,
        {"default": {"succeeded": 30, "dead": 5}},
        {"default": BrokerFigures(ready=3, unacked=1, consumers=2)},
    )
    assert rows[0].counts["queued"] == 3
    assert rows[0].counts["waiting"] == 0
    assert list(rows[0].counts) == [
        "waiting", "scheduled", "queued", "running", "retrying", "succeeded", "dead", "canceled",
    ]  # fmt: skip
    assert rows[0].succeeded_per_minute == 6.0
    assert rows[0].dead_per_minute == 1.0
    assert rows[0].broker == BrokerFigures(ready=3, unacked=1, consumers=2)
    assert rows[1].figures is None
    assert rows[1].broker is None
    assert queue_rows(queues, {}, [], {}, None)[0].broker is None


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(None, "—"), (4.25, "4.2s"), (185, "3m 05s"), (3720, "1h 02m"), (3 * 86400 + 7200, "3d 2h")],
)
def test_durations_read_as_a_person_says_them(seconds: float | None, text: str) -> None:
    assert age(seconds) == text


def test_the_trace_link_needs_a_template_and_a_trace() -> None:
    url = "http://127.0.0.1:16686/trace/{trace_id}"
    assert trace_link(url, "ab" * 16) == f"http://127.0.0.1:16686/trace/{'ab' * 16}"
    assert trace_link("", "ab" * 16) is None
    assert trace_link(url, None) is None


def test_a_csrf_token_is_bound_to_its_session() -> None:
    token = "eyJ.header.payload-signature"
    assert csrf_token(token) == csrf_token(token)
    assert csrf_token(token) != csrf_token(token + "x")
    assert "payload" not in csrf_token(token)


def test_the_trace_url_setting_must_be_http_and_name_the_trace() -> None:
    ok = "https://tempo.example/explore?trace={trace_id}"
    assert Settings.from_env({"JOBQ_UI_TRACE_URL": ok}).ui_trace_url == ok
    for bad in ("http://jaeger/trace/", "javascript:alert(1)//{trace_id}", "/trace/{trace_id}"):
        with pytest.raises(ConfigError, match="JOBQ_UI_TRACE_URL"):
            Settings.from_env({"JOBQ_UI_TRACE_URL": bad})
