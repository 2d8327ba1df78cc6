"""Groups on one host (``--group-size``): one queue feeds independent worker groups; a fault
restarts its own group only, the others keep serving, and nothing queued is lost."""

from __future__ import annotations

import json
import os
import signal
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from para_attn_server.testing import Server, pid_gone
from tests.integration.support import Join, metric

pytestmark = pytest.mark.timeout(240)

STEPS, STEP_SECONDS = 10, 0.1  # a one-second job that sleeps (so two fit on two cores at once)


@pytest.fixture(scope="module")
def server(launch) -> Server:
    return launch("--model", "tests.predictors:Faulty", "--num-devices", "2", "--group-size", "1")


def group_of(server: Server, index: int) -> dict[str, Any]:
    group: dict[str, Any] = server.status()["groups"][index]
    return group


def wait_group_ready(server: Server, index: int, generation: int, since: int) -> None:
    server.log.wait_for(rf"worker group {index} generation {generation} ready", timeout=120, since=since)


def test_status_metrics_and_jobs_name_the_groups(server: Server) -> None:
    status = server.status()
    assert status["ready"] is True
    assert [(row["group"], row["rank"]) for row in status["ranks"]] == [(0, 0), (1, 0)]
    assert [(g["group"], g["ready"], g["busy"], len(g["ranks"])) for g in status["groups"]] == [
        (0, True, False, 1),
        (1, True, False, 1),
    ]
    assert metric(server, "para_attn_group_ready", group="1") == 1
    assert metric(server, "para_attn_group_restarts_total", group="0") == 0
    assert server.run(tag="one")["group"] in (0, 1)


def test_two_groups_run_two_jobs_at_the_same_time(server: Server) -> None:
    with ThreadPoolExecutor(2) as pool:
        jobs = list(pool.map(lambda tag: server.run(tag=tag, steps=STEPS, step_seconds=STEP_SECONDS), ["a", "b"]))

    assert [job["state"] for job in jobs] == ["succeeded", "succeeded"]
    assert sorted(job["group"] for job in jobs) == [0, 1]
    # One after the other, two jobs that each sleep 1 s take at least 2 s from the first
    # start to the last end; at the same time, about 1 s.
    span = max(job["finished_at"] for job in jobs) - min(job["started_at"] for job in jobs)
    print(f"two 1-second jobs on two groups: {span:.2f} s from the first start to the last end")
    assert span < STEPS * STEP_SECONDS * 2


def test_a_rank_killed_in_one_group_leaves_the_other_serving_and_its_job_runs_again(
    server: Server, tmp_path: Path
) -> None:
    restarts = [group_of(server, 0)["restarts"], group_of(server, 1)["restarts"]]
    keep, lose = tmp_path / "keep", tmp_path / "lose"
    kept = server.submit(hold=str(keep), tag="kept")  # the first idle group: group 0
    server.wait_running(kept)
    lost = server.submit(hold=str(lose), tag="lost")
    server.wait_running(lost)
    queued = server.submit(tag="queued")
    assert server.http.get(f"/v1/jobs/{queued}").json()["state"] == "queued"  # both groups are busy
    victim = group_of(server, 1)["ranks"][0]["pid"]
    since = len(server.log.lines)
    os.kill(victim, signal.SIGKILL)
    lose.touch()  # its next attempt may finish

    again = server.wait(lost)  # requeued at the head: it runs before the queued job
    assert again["state"] == "succeeded"
    first, second = again["attempts"]
    assert first["group"] == 1
    assert f"rank 0 (pid {victim}) killed by SIGKILL" in first["fault"]
    assert second["fault"] is None
    assert second["started_at"] >= first["ended_at"]
    assert json.loads(server.output(lost))["tag"] == "lost"
    keep.touch()
    job = server.wait(kept)
    assert (job["state"], job["group"]) == ("succeeded", 0)
    assert server.wait(queued)["state"] == "succeeded"  # nothing queued is lost

    wait_group_ready(server, 1, restarts[1] + 2, since)
    assert [group_of(server, 0)["restarts"], group_of(server, 1)["restarts"]] == [restarts[0], restarts[1] + 1]
    assert "killed by SIGKILL" in group_of(server, 1)["last_fault"]
    assert pid_gone(victim)
    # The restarted group serves again: with group 0 busy, the next job runs there.
    held = tmp_path / "held"
    busy = server.submit(hold=str(held))
    server.wait_running(busy)
    after = server.run(tag="after the restart")
    assert (after["state"], after["group"]) == ("succeeded", 1)
    assert json.loads(server.output(after["id"]))["tag"] == "after the restart"
    held.touch()
    assert server.wait(busy)["group"] == 0


def test_cancel_reaches_the_group_that_runs_the_job(server: Server, tmp_path: Path) -> None:
    hold = tmp_path / "hold"
    first = server.submit(hold=str(hold))
    server.wait_running(first)
    second = server.submit(steps=1000, step_seconds=0.05)
    server.wait_running(second, step=1)

    cancelled = server.http.post(f"/v1/jobs/{second}/cancel")
    assert cancelled.status_code == 200
    job = server.wait(second)
    assert (job["state"], job["group"]) == ("cancelled", 1)
    assert server.http.get(f"/v1/jobs/{first}").json()["state"] == "running"
    hold.touch()
    assert server.wait(first)["state"] == "succeeded"


def test_join_refuses_a_server_that_takes_no_hosts(server: Server) -> None:
    join = Join(server.url, "any token", "--num-devices", "1")

    assert join.wait(120) == 2
    assert "takes no joining hosts: start it with --join-token (or --num-devices 0)" in join.log.text
    assert server.http.get("/v1/cluster/join").status_code == 404
    assert server.http.post("/v1/cluster/hosts", json={}).status_code == 404


def test_sigterm_drains_every_group(launch, tmp_path: Path) -> None:
    server: Server = launch("--model", "tests.predictors:Faulty", "--num-devices", "2", "--group-size", "1")
    pids = server.rank_pids()
    holds = [tmp_path / "a", tmp_path / "b"]
    running = [server.submit(hold=str(hold), tag=hold.name) for hold in holds]
    for job_id in running:
        server.wait_running(job_id)

    with ThreadPoolExecutor(2) as pool:
        outcomes = [pool.submit(server.wait, job_id) for job_id in running]  # long polls across the drain
        server.terminate()
        server.log.wait_for("draining")
        assert server.http.post("/v1/jobs", json={"tag": "too late"}).status_code == 503
        assert server.process.poll() is None  # waiting for both running jobs
        for hold in holds:
            hold.touch()
        jobs = [outcome.result(timeout=60) for outcome in outcomes]

    assert sorted((job["state"], job["group"]) for job in jobs) == [("succeeded", 0), ("succeeded", 1)]
    assert server.process.wait(60) == 0
    assert all(pid_gone(pid) for pid in pids)
