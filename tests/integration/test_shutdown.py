"""SIGTERM drains: no new jobs, the running one finishes, the ranks stop, exit code 0."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from para_attn_server.testing import Server, pid_gone

pytestmark = pytest.mark.timeout(120)


def test_sigterm_finishes_the_running_job_then_exits_cleanly(launch, tmp_path: Path) -> None:
    server = launch("--model", "tests.predictors:Faulty", "--num-devices", "2")
    pids = server.rank_pids()
    hold = tmp_path / "hold"
    running = server.submit(hold=str(hold), tag="drained", output_path="drained.json")
    server.wait_running(running)
    queued = server.submit(tag="never runs")

    with ThreadPoolExecutor(1) as pool:
        # A client long-polling the running job while the server drains.
        outcome = pool.submit(server.wait, running)
        server.terminate()
        server.log.wait_for("draining")
        refused = server.http.post("/generate", json={"tag": "too late"})
        assert refused.status_code == 503
        queued_job = server.http.get(f"/v1/jobs/{queued}").json()
        assert queued_job["state"] == "cancelled"
        assert "shutting down" in queued_job["error"]
        assert server.process.poll() is None  # still waiting for the running job

        hold.touch()
        assert outcome.result(timeout=60)["state"] == "succeeded"

    assert server.process.wait(60) == 0
    assert json.loads((server.output_dir / "drained.json").read_text())["tag"] == "drained"
    assert all(pid_gone(pid) for pid in pids)
    assert server.stop() == 0


def test_sigterm_when_idle_exits_cleanly(launch) -> None:
    server: Server = launch("--model", "noop", "--num-devices", "2")
    pids = server.rank_pids()
    assert server.stop() == 0
    assert all(pid_gone(pid) for pid in pids)
    assert "Traceback" not in server.log.text
