"""Figures the end-to-end tests report, printed in the terminal summary (``pytest -q`` shows no
output of a passing test)."""

from __future__ import annotations

from collections.abc import Callable

import pytest

#: Where ``pytest_terminal_summary`` finds the lines the tests reported.
FIGURES = pytest.StashKey[list[str]]()


@pytest.fixture
def summary(request: pytest.FixtureRequest) -> Callable[[str], None]:
    """Adds a line to the summary."""
    return request.config.stash.setdefault(FIGURES, []).append


def pytest_terminal_summary(
    terminalreporter: pytest.TerminalReporter, config: pytest.Config
) -> None:
    lines = config.stash.get(FIGURES, [])
    if lines:
        terminalreporter.section("end to end: figures")
        for line in lines:
            terminalreporter.write_line(line)
