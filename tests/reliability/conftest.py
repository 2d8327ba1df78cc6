"""Fixtures of the reliability suite: the report every test adds its measurements to,
written when the session ends (see support.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from para_attn_server.testing import Server
from tests.reliability.support import Report

_report_key = pytest.StashKey[Report]()


@pytest.fixture(scope="session")
def report(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Report:
    config = request.config
    if _report_key not in config.stash:
        config.stash[_report_key] = Report(tmp_path_factory.getbasetemp())
    return config.stash[_report_key]


def pytest_sessionfinish(session: pytest.Session) -> None:
    report = session.config.stash.get(_report_key, None)
    if report is not None and report.sections:
        session.config.stash[_written_key] = report.write()


_written_key = pytest.StashKey[list[Path]]()


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    report = config.stash.get(_report_key, None)
    if report is None or not report.sections:
        return
    terminalreporter.section("reliability report")
    terminalreporter.write(report.markdown())
    for path in config.stash.get(_written_key, []):
        terminalreporter.write_line(f"written to {path} (and .json)")


@pytest.fixture
def servers() -> Iterator[list[Server]]:
    """A list to put the servers a test starts in: each is closed after the test."""
    started: list[Server] = []
    yield started
    for server in started:
        server.close()
