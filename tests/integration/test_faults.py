"""Faults in the ranks fail the job that hit them with a clear reason; the worker group is
restarted when (and only when) it has to be, and the next job succeeds."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest

from para_attn_server.testing import Server, pid_gone

pytestmark = pytest.mark.timeout(180)

JOB_TIMEOUT = 6
HEARTBEAT_TIMEOUT = 3


@pytest.fixture(scope="module")
def server(launch) -> Server:
    return launch(
        "--model", "tests.predictors:Faulty", "--num-devices", "2", "--job-timeout", str(JOB_TIMEOUT),
        "--heartbeat-timeout", str(HEARTBEAT_TIMEOUT), "--cancel-grace", "2",
        "--max-attempts", "1",  # each fault fails its job (test_requeue.py runs them again)
    )  # fmt: skip


def test_error_on_one_rank_fails_the_job_naming_that_rank(server: Server) -> None:
    job = server.run(fault="raise", fault_rank=1)
    assert job["state"] == "failed"
    assert "rank 1: RuntimeError: injected fault on rank 1" in job["error"]
    assert server.run(tag="next")["state"] == "succeeded"


def test_error_on_every_rank_fails_the_job_without_a_restart(server: Server) -> None:
    restarts = server.restarts()
    pids = server.rank_pids()
    job = server.run(fault="raise", fault_rank=-1)
    assert job["state"] == "failed"
    assert "RuntimeError: injected fault on rank" in job["error"]
    assert server.run(tag="next")["state"] == "succeeded"
    assert server.restarts() == restarts
    assert server.rank_pids() == pids


def test_killed_rank_fails_its_job_and_the_queued_job_runs_after_a_restart(server: Server, tmp_path: Path) -> None:
    restarts = server.restarts()
    held = server.submit(hold=str(tmp_path / "never"))  # runs until its rank dies
    server.wait_running(held)
    queued = server.submit(tag="queued behind")
    victim = server.rank_pids()[1]
    os.kill(victim, signal.SIGKILL)

    job = server.wait(held)
    assert job["state"] == "failed"
    assert f"rank 1 (pid {victim}) killed by SIGKILL" in job["error"]
    after = server.wait(queued)
    assert after["state"] == "succeeded"
    assert json.loads(server.output(queued))["tag"] == "queued behind"
    assert server.restarts() == restarts + 1
    assert victim not in server.rank_pids()
    assert pid_gone(victim)


@pytest.mark.parametrize(("fault", "death"), [("exit", "exited with code 13"), ("kill", "killed by SIGKILL")])
def test_rank_dying_mid_job_fails_it_saying_how(server: Server, fault: str, death: str) -> None:
    # Its peer fails too (gloo: connection closed): the job's reason must lead with the death.
    restarts = server.restarts()
    pid = server.rank_pids()[1]
    job = server.run(fault=fault, fault_rank=1, fault_step=2)
    assert job["state"] == "failed"
    assert job["error"].startswith(f"rank 1 (pid {pid}) {death}")
    assert server.run(tag="next")["state"] == "succeeded"
    assert server.restarts() == restarts + 1


@pytest.mark.parametrize("fault", ["hang_collective", "hang_outside"])
def test_hung_rank_times_the_job_out_and_the_group_restarts(server: Server, fault: str) -> None:
    restarts = server.restarts()
    old_pids = server.rank_pids()
    job = server.run(fault=fault, fault_rank=1, fault_step=2)
    assert job["state"] == "failed"
    assert f"timed out after {JOB_TIMEOUT} s" in job["error"]
    assert server.run(tag="next")["state"] == "succeeded"
    assert server.restarts() == restarts + 1
    assert all(pid_gone(pid) for pid in old_pids)


def test_frozen_rank_misses_heartbeats_and_the_group_restarts(server: Server) -> None:
    restarts = server.restarts()
    frozen = server.rank_pids()[1]
    job = server.run(fault="freeze", fault_rank=1)
    assert job["state"] == "failed"
    assert f"rank 1 (pid {frozen}) sent no heartbeat" in job["error"]
    assert server.run(tag="next")["state"] == "succeeded"
    assert server.restarts() == restarts + 1
    assert pid_gone(frozen)
