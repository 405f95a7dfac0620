"""``jobq up`` hands its workers every worker flag it was given."""

from __future__ import annotations

import pytest

from services.cli import _settings, build_parser, worker_args


def test_up_passes_queues_concurrency_and_handlers_to_its_workers(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("JOBQ_HANDLERS", raising=False)
    args = build_parser().parse_args(
        ["up", "--queues", "a,b", "--concurrency", "7", "--handlers", "myapp.jobs"]
    )
    assert worker_args(_settings(args)) == [
        "--queues", "a,b", "--concurrency", "7", "--handlers", "myapp.jobs",
    ]  # fmt: skip
    assert "--handlers" not in worker_args(_settings(build_parser().parse_args(["up"])))
