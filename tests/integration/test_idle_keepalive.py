"""Idle ranks do not die of collective timeouts: an idle rank waits on its own connection to
the server, never inside a collective, so a group outlives its (here 2 s) collective timeout
however long it idles, with nothing sent to keep it alive."""

from __future__ import annotations

import threading

import pytest

pytestmark = pytest.mark.timeout(120)

COLLECTIVE_TIMEOUT = 2.0
IDLE = 3 * COLLECTIVE_TIMEOUT
COMMON = ("--model", "noop", "--num-devices", "2", "--collective-timeout", str(COLLECTIVE_TIMEOUT))


def test_idle_group_outlives_the_collective_timeout(launch) -> None:
    server = launch(*COMMON)
    pids = server.rank_pids()
    assert server.run(steps=2)["state"] == "succeeded"  # the group works, and has used its groups
    # Idling *is* the behaviour under test: nothing happens that could be awaited instead.
    threading.Event().wait(IDLE)
    assert server.run(steps=2)["state"] == "succeeded"
    assert server.restarts() == 0
    assert server.rank_pids() == pids
    assert "fault" not in server.log.text
