"""Idle ranks do not die of collective timeouts: rank 0's keep-alive reaches the others
before their (here 2 s) collective timeout. Without it, the group dies and restarts."""

from __future__ import annotations

import threading

import pytest

pytestmark = pytest.mark.timeout(120)

COLLECTIVE_TIMEOUT = 2.0
IDLE = 3 * COLLECTIVE_TIMEOUT
COMMON = ("--model", "noop", "--num-devices", "2", "--collective-timeout", str(COLLECTIVE_TIMEOUT))


def test_idle_group_with_keepalive_outlives_the_collective_timeout(launch) -> None:
    server = launch(*COMMON, "--keepalive-interval", "0.5")
    pids = server.rank_pids()
    # Idling *is* the behaviour under test: nothing happens that could be awaited instead.
    threading.Event().wait(IDLE)
    assert server.run(steps=2)["state"] == "succeeded"
    assert server.restarts() == 0
    assert server.rank_pids() == pids
    assert "fault" not in server.log.text


def test_idle_group_without_keepalive_dies_of_the_collective_timeout(launch) -> None:
    # A keep-alive period longer than the idle time under test: none is sent.
    server = launch(*COMMON, "--keepalive-interval", str(10 * IDLE))
    fault = server.log.wait_for(r"generation 1 fault: (.*)", timeout=IDLE + 30)
    assert "rank 1" in fault[1]
    server.log.wait_for(r"generation 2 ready", timeout=60)
    assert server.restarts() >= 1
    server.log.wait_for("Timed out waiting", timeout=30)  # gloo's collective timeout, in rank 1's log
