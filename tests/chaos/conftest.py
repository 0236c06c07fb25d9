"""The chaos marker, and a report of the counts each chaos test printed, shown after the run."""

from __future__ import annotations

from collections.abc import Callable

import pytest

COUNT_LINES = pytest.StashKey[list[str]]()


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "chaos: kills or stops the daemon, Redis or the gateway stand-in while events stream in",
    )
    config.stash[COUNT_LINES] = []


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter, config: pytest.Config) -> None:
    lines = config.stash.get(COUNT_LINES, [])
    if not lines:
        return
    terminalreporter.section("chaos counts")
    for text in lines:
        terminalreporter.write_line(text)


@pytest.fixture
def report_counts(request: pytest.FixtureRequest) -> Callable[[str], None]:
    """Print a line of counts and keep it for the summary at the end of the run."""

    def report(text: str) -> None:
        print(text)
        request.config.stash[COUNT_LINES].append(text)

    return report
