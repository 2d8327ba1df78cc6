"""Queue states, the full queue, failed jobs and every form of cancel, on one server."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from para_attn_server.testing import Server

pytestmark = pytest.mark.timeout(180)

SLOW = {"steps": 1000, "step_seconds": 0.05}  # ~50 s unless cancelled


@pytest.fixture(scope="module")
def server(launch) -> Server:
    return launch("--model", "tests.predictors:Faulty", "--num-devices", "2", "--max-queue", "2", "--cancel-grace", "5")


@pytest.fixture
def busy(server: Server) -> Iterator[tuple[str, list[str]]]:
    """A running slow job and a full queue (2) behind it; all cancelled afterwards."""
    running = server.submit(**SLOW, tag="running")
    server.wait_running(running, step=1)
    queued = [server.submit(tag=f"queued {k}") for k in range(2)]
    yield running, queued
    for job_id in [*queued, running]:
        server.http.post(f"/v1/jobs/{job_id}/cancel")
        server.wait(job_id)
    assert server.restarts() == 0  # none of this needed a restart


def test_queued_and_running_jobs_are_202(server: Server, busy: tuple[str, list[str]]) -> None:
    running, queued = busy
    response = server.http.get(f"/get_output/{running}")
    assert response.status_code == 202
    assert response.json()["status"] == "running"
    assert response.json()["progress"]["total"] == SLOW["steps"]
    response = server.http.post(f"/request_status/{queued[0]}")
    assert (response.status_code, response.json()) == (202, {"status": "queued"})
    assert server.http.get(f"/v1/jobs/{queued[1]}").json()["queue_position"] == 1


def test_full_queue_is_429_with_retry_after(server: Server, busy: tuple[str, list[str]]) -> None:
    for path in ("/generate", "/v1/jobs"):
        refused = server.http.post(path, json={"tag": "one too many"})
        assert refused.status_code == 429
        assert int(refused.headers["retry-after"]) >= 1
    # A freed slot takes a job again.
    server.http.post(f"/cancel/{busy[1][0]}")
    assert server.http.post("/generate", json={"tag": "fits"}).status_code == 202


def test_cancel_queued_job_by_body_or_path(server: Server, busy: tuple[str, list[str]]) -> None:
    _, queued = busy
    by_body = server.http.post("/cancel", json={"request_id": queued[0]})
    assert (by_body.status_code, by_body.json()["state"]) == (200, "cancelled")
    by_path = server.http.post(f"/cancel/{queued[1]}")
    assert (by_path.status_code, by_path.json()["state"]) == (200, "cancelled")
    for job_id in queued:
        job = server.http.get(f"/v1/jobs/{job_id}").json()
        assert job["state"] == "cancelled"
        assert "started_at" not in job  # it never ran
        assert server.http.get(f"/get_output/{job_id}").status_code == 404
        assert server.http.post(f"/cancel/{job_id}").status_code == 404  # already ended


def test_cancel_without_body_stops_the_running_job(server: Server, busy: tuple[str, list[str]]) -> None:
    running, queued = busy
    response = server.http.post("/cancel")
    assert (response.status_code, response.json()["state"]) == (200, "cancelled")
    job = server.wait(running)
    assert job["state"] == "cancelled"
    assert job["step"] < SLOW["steps"]
    assert server.http.post(f"/v1/jobs/{running}/cancel").status_code == 409
    # The queue moves on to the next job.
    assert server.wait(queued[0])["state"] == "succeeded"


def test_v1_cancel_of_a_running_job(server: Server) -> None:
    job_id = server.submit(**SLOW)
    server.wait_running(job_id)
    response = server.http.post(f"/v1/jobs/{job_id}/cancel")
    assert response.status_code == 200
    assert response.json()["id"] == job_id
    assert server.wait(job_id)["state"] == "cancelled"
    assert server.run(tag="after")["state"] == "succeeded"


def test_failed_job_is_500_with_its_error(server: Server) -> None:
    job = server.run(fault="raise")
    assert job["state"] == "failed"
    response = server.http.get(f"/get_output/{job['id']}")
    assert response.status_code == 500
    assert "injected fault" in response.json()["error"]
    output = server.http.get(f"/v1/jobs/{job['id']}/output")
    assert output.status_code == 409
    assert "injected fault" in output.json()["error"]
