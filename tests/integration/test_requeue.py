"""A job whose group loses a rank mid-run runs again (at the head of the queue) on the
restarted group, up to --max-attempts runs in all: one job id, each run in its view, a
``requeued`` event, one output; after the last run it fails with every run's reason. A
predictor that raises is its own failure: no second run."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from para_attn_server.testing import Server

pytestmark = pytest.mark.timeout(180)


@pytest.fixture(scope="module")
def server(launch: Any) -> Server:
    server: Server = launch("--model", "tests.predictors:Faulty", "--num-devices", "2")  # --max-attempts 2
    return server


def test_a_rank_killed_mid_job_costs_the_job_nothing_it_succeeds_on_its_second_run(
    server: Server, tmp_path: Path
) -> None:
    once = tmp_path / "once"
    once.touch()  # the first run takes it and its rank 1 is killed at step 2; the second runs clean
    pid = server.rank_pids()[1]
    # Its steps take 0.3 s: the event stream is open well before step 2.
    job_id = server.submit(fault="kill", fault_rank=1, fault_step=2, fault_once=str(once), tag="survivor",
                           step_seconds=0.3)  # fmt: skip
    events = list(server.events(job_id))
    view = server.wait(job_id)
    assert view["state"] == "succeeded"
    first, second = view["attempts"]
    assert first["fault"].startswith(f"rank 1 (pid {pid}) killed by SIGKILL")
    assert (first["group"], second["group"], second["fault"]) == (0, 0, None)
    assert second["started_at"] >= first["ended_at"]
    assert json.loads(server.output(job_id))["tag"] == "survivor"
    kinds = [event for event, _ in events]
    assert "requeued" in kinds
    requeued = next(data for event, data in events if event == "requeued")
    assert requeued["fault"] == first["fault"]
    states = [data["state"] for event, data in events if event == "state"]
    assert states[-3:] == ["queued", "running", "succeeded"]  # back in the queue, then ran again
    assert server.http.get("/v1/jobs", params={"state": "succeeded"}).json()["data"][0]["id"] == job_id
    assert "para_attn_job_requeues_total 1.0" in server.http.get("/metrics").text


def test_after_max_attempts_the_job_fails_with_every_runs_reason(server: Server) -> None:
    pids = [server.rank_pids()[1]]
    job_id = server.submit(fault="exit", fault_rank=1, fault_step=1)
    view = server.wait(job_id)
    pids.append(view["attempts"][1]["fault"].split("pid ")[1].split(")")[0])
    assert view["state"] == "failed"
    assert len(view["attempts"]) == 2
    assert view["error"].startswith(f"attempt 1 (group 0): rank 1 (pid {pids[0]}) exited with code 13")
    assert "; attempt 2 (group 0): rank 1 (pid " in view["error"]
    assert server.run(tag="next")["state"] == "succeeded"


def test_a_predictor_that_raises_is_not_run_again(server: Server) -> None:
    view = server.run(fault="raise", fault_rank=-1)
    assert view["state"] == "failed"
    assert "attempts" not in view
    assert "injected fault" in view["error"]
