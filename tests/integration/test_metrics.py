"""``/metrics`` of a real server (2 ranks of the Faulty test predictor) after a few jobs and
a rank that exits mid-job, read with prometheus_client's parser as Prometheus would. The
fleet's host series (a joined host) are in test_fleet_surfaces.py."""

from __future__ import annotations

import pytest

from para_attn_server.testing import Server
from tests.integration.support import scrape

pytestmark = pytest.mark.timeout(180)


@pytest.fixture(scope="module")
def server(launch) -> Server:
    return launch("--model", "tests.predictors:Faulty", "--num-devices", "2", "--max-queue", "1", "--max-attempts", "1")


def test_metrics_after_jobs_a_fault_and_a_refused_job(server: Server) -> None:
    for tag in ("one", "two"):
        assert server.run(tag=tag, steps=4, step_seconds=0.05)["state"] == "succeeded"
    pid = server.rank_pids()[1]
    faulted = server.run(fault="exit", fault_rank=1, fault_step=2)
    server.log.wait_for(r"worker group generation 1 ready")
    running = server.submit(steps=200, step_seconds=0.05)
    server.wait_running(running)
    server.submit(tag="waits")
    refused = server.http.post("/v1/jobs", json={"tag": "one too many"})

    m = scrape(server)
    [host] = server.status()["hosts"]  # one server, no fleet: only its own host
    server.http.post(f"/v1/jobs/{running}/cancel")

    assert faulted["error"].startswith(f"rank 1 (pid {pid}) exited with code 13")
    assert refused.status_code == 429
    assert m.value("para_attn_jobs_submitted_total") == 5
    assert m.value("para_attn_jobs_rejected_total") == 1
    assert m.value("para_attn_jobs_finished_total", state="succeeded") == 2
    assert m.value("para_attn_jobs_finished_total", state="failed") == 1
    assert m.value("para_attn_group_restarts_total", group="0") == 1
    assert m.value("para_attn_group_ready", group="0") == 1
    assert m.value("para_attn_group_ranks_up", group="0") == m.value("para_attn_group_ranks", group="0") == 2
    assert m.value("num_requests_running") == m.value("para_attn_jobs_running") == 1
    assert m.value("num_requests_waiting") == m.value("para_attn_queue_length") == 1
    assert m.value("para_attn_queue_wait_seconds_count") == 4  # every job that started
    assert m.value("para_attn_job_duration_seconds_count", state="succeeded") == 2
    assert m.value("para_attn_job_duration_seconds_count", state="failed") == 1
    assert m.value("para_attn_step_seconds_count") >= 2 * 3  # 3 gaps between 4 steps, twice
    assert m.value("para_attn_step_seconds_bucket", le="0.025") < m.value("para_attn_step_seconds_count")  # >= 50 ms
    assert m.value("para_attn_http_requests_total", method="POST", path="/v1/jobs", status_code="201") == 5
    assert m.value("para_attn_http_requests_total", method="POST", path="/v1/jobs", status_code="429") == 1
    # The server's own host, and its group labelled with it.
    name = host["name"]
    assert host["state"] == "local"
    assert m.value("para_attn_group_ready", group="0", host=name) == 1
    assert m.value("para_attn_group_restarts_total", group="0", host=name) == 1
    assert m.value("para_attn_host_up", host=name) == 1
    assert [s.labels["state"] for s in m.samples if s.name == "para_attn_host_state" and s.value == 1] == ["local"]
    assert m.value("para_attn_host_groups", host=name) == 1
    assert m.value("para_attn_host_devices", host=name) == 2
    assert m.value("para_attn_host_runs_total", host=name) == 4  # a run per job that started
    assert m.get("para_attn_host_last_seen_seconds", -1, host=name) == -1  # a local host asks for no orders
    for family in ("para_attn_queue_wait_seconds", "para_attn_job_duration_seconds", "para_attn_step_seconds"):
        assert m.kind(family) == "histogram"
    assert m.kind("para_attn_host_runs") == "counter"
