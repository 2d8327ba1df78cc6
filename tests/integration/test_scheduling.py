"""Scheduling on a one-group server: priorities (higher first, first come first among equals,
capped by --max-priority) and queue deadlines (a job not started within max_queue_seconds
ends expired, never run, and the original API answers it as failed)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from para_attn_server.testing import Server

pytestmark = pytest.mark.timeout(180)


@pytest.fixture(scope="module")
def served(launch: Any) -> Server:
    server: Server = launch("--model", "tests.predictors:Faulty", "--num-devices", "1", "--max-priority", "50")
    return server


@pytest.fixture
def hold(tmp_path: Path) -> Iterator[Path]:
    """A file whose creation lets a job given ``hold=str(path)`` finish (created at the end
    whatever happens, so no job of a failed test holds the group for the next)."""
    path = tmp_path / "release"
    yield path
    path.touch()


def test_a_higher_priority_job_runs_before_the_waiting_ones_and_equals_keep_their_order(
    served: Server, hold: Path
) -> None:
    busy = served.submit(hold=str(hold), tag="busy")
    served.wait_running(busy)
    waiting = [served.submit(tag=f"p0-{n}") for n in range(5)]
    urgent = served.submit(tag="p10", priority=10)
    low = served.submit(tag="low", priority=-3)
    views = {job_id: served.http.get(f"/v1/jobs/{job_id}").json() for job_id in [*waiting, urgent, low]}
    assert views[urgent]["queue_position"] == 0
    assert views[urgent]["priority"] == 10
    assert [views[job_id]["queue_position"] for job_id in waiting] == [1, 2, 3, 4, 5]
    assert views[low]["queue_position"] == 6
    waiting_by_priority = {
        sample.labels["priority"]: sample.value
        for family in text_string_to_metric_families(served.http.get("/metrics").text)
        for sample in family.samples
        if sample.name == "para_attn_queue_length_by_priority"
    }
    assert waiting_by_priority == {"-3": 1, "0": 5, "10": 1}
    hold.touch()
    ended = [served.wait(job_id) for job_id in [busy, *waiting, urgent, low]]
    assert all(view["state"] == "succeeded" for view in ended)
    started = sorted(ended, key=lambda view: view["started_at"])
    assert [view["id"] for view in started] == [busy, urgent, *waiting, low]


@pytest.mark.parametrize(("priority", "reason"), [(51, "at most 50 on this server"), (-101, "")])
def test_a_priority_beyond_the_limits_is_a_400_naming_it(served: Server, priority: int, reason: str) -> None:
    response = served.http.post("/v1/jobs", json={"priority": priority})
    assert response.status_code == 400
    assert response.json()["error"].startswith("priority:")
    assert reason in response.json()["error"]


def test_a_job_not_started_within_max_queue_seconds_expires_without_running(served: Server, hold: Path) -> None:
    busy = served.submit(hold=str(hold), tag="busy")
    served.wait_running(busy)
    late = served.submit(tag="late", max_queue_seconds=0.5)
    events = served.events(late)
    view = served.wait(late, timeout=30)  # ends while the busy job still holds the group
    assert view["state"] == "expired"
    assert view["error"] == "not started within 0.5 s (max_queue_seconds)"
    assert view.get("started_at") is None
    assert served.http.get(f"/v1/jobs/{busy}").json()["state"] == "running"
    states = [data["state"] for event, data in events if event == "state"]
    assert states[-1] == "expired"
    original = served.http.get(f"/get_output/{late}")
    assert original.status_code == 500
    assert original.json()["state"] == "failed"
    assert "not started within 0.5 s" in original.json()["error"]
    listed = served.http.get("/v1/jobs", params={"state": "expired"}).json()["data"]
    assert late in [job["id"] for job in listed]
    hold.touch()
    assert served.wait(busy)["state"] == "succeeded"
    metrics = served.http.get("/metrics").text
    assert 'para_attn_jobs_finished_total{state="expired"} 1.0' in metrics
