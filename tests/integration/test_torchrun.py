"""The ``torchrun`` executor: the same server with torchrun's agent starting the ranks."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest

from para_attn_server.testing import Server, pid_gone

pytestmark = pytest.mark.timeout(180)


@pytest.fixture(scope="module")
def server(launch) -> Server:
    return launch(
        "--model", "tests.predictors:Faulty", "--num-devices", "2", "--executor", "torchrun", "--max-attempts", "1"
    )  # fmt: skip


def test_jobs_run_on_ranks_started_by_torchrun(server: Server) -> None:
    job = server.run(tag="via torchrun")
    assert job["state"] == "succeeded"
    assert json.loads(server.output(job["id"]))["tag"] == "via torchrun"
    assert len(server.rank_pids()) == 2


def test_killed_rank_makes_torchrun_exit_and_the_group_restarts(server: Server, tmp_path: Path) -> None:
    restarts = server.restarts()
    held = server.submit(hold=str(tmp_path / "never"))
    server.wait_running(held)
    victim = server.rank_pids()[1]
    os.kill(victim, signal.SIGKILL)

    job = server.wait(held)
    assert job["state"] == "failed"
    assert "torchrun" in job["error"]
    assert server.run(tag="after")["state"] == "succeeded"
    assert server.restarts() == restarts + 1
    assert pid_gone(victim)
