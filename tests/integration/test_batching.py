"""Batching served: ``tiny`` on 2 ranks with ``--max-batch 4``. Jobs queued together with
distinct prompts and seeds share pipeline calls (their views say ``batch_size``) and each
output equals the same job run alone; cancelling one job of a running batch ends it at once
and leaves the others' outputs equal to their lone runs."""

from __future__ import annotations

import io
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pytest

from para_attn_server.testing import Server

pytestmark = pytest.mark.timeout(240)

JOB: dict[str, Any] = {"width": 32, "height": 32, "num_inference_steps": 4, "output_format": "npy"}


@pytest.fixture(scope="module")
def served(launch: Any) -> Server:
    server: Server = launch("--model", "tiny", "--num-devices", "2", "--max-batch", "4")
    return server


def fields(n: int, **extra: Any) -> dict[str, Any]:
    return {**JOB, "prompt": f"a cat, number {n}", "seed": 100 + n, **extra}


def npy(data: bytes) -> np.ndarray:
    return np.load(io.BytesIO(data))


def alone(served: Server, job: dict[str, Any]) -> np.ndarray:
    """The job run with nothing else queued: a batch of one."""
    view = served.run(**job)
    assert (view["state"], view["batch_size"]) == ("succeeded", 1), view
    return npy(served.output(view["id"]))


def behind_a_long_job(served: Server, jobs: list[dict[str, Any]]) -> list[str]:
    """Submit ``jobs`` at once while a longer job (another batch key) holds the group, so
    they wait in the queue together."""
    blocker = served.submit(**fields(-1, num_inference_steps=49))
    served.wait_running(blocker)
    with ThreadPoolExecutor(len(jobs)) as pool:
        return list(pool.map(lambda job: served.submit(**job), jobs))


def test_jobs_queued_together_share_calls_and_each_equals_its_lone_run(served: Server) -> None:
    jobs = [fields(n) for n in range(8)]
    ids = behind_a_long_job(served, jobs)
    views = [served.wait(job_id) for job_id in ids]
    assert all(view["state"] == "succeeded" for view in views), views
    assert max(view["batch_size"] for view in views) > 1
    assert all(view["batch_size"] <= 4 for view in views)
    outputs = [npy(served.output(job_id)) for job_id in ids]
    assert len({output.tobytes() for output in outputs}) == 8  # each its own prompt and seed
    for job, output in zip(jobs, outputs, strict=True):
        assert np.abs(output - alone(served, job)).max() <= 1 / 255
    calls = served.http.get("/metrics").text
    assert 'para_attn_batch_size_bucket{le="4.0"}' in calls


def test_one_job_cancelled_out_of_a_running_batch_leaves_the_others_equal_to_their_lone_runs(
    served: Server,
) -> None:
    jobs = [fields(10 + n, num_inference_steps=30) for n in range(4)]
    ids = behind_a_long_job(served, jobs)
    served.wait_running(ids[0])
    assert served.http.get(f"/v1/jobs/{ids[1]}").json()["batch_size"] == 4
    cancelled = served.http.post(f"/v1/jobs/{ids[1]}/cancel").json()
    assert cancelled["state"] == "cancelled"  # at once: the batch goes on for the others
    views = [served.wait(job_id) for job_id in ids]
    assert [view["state"] for view in views] == ["succeeded", "cancelled", "succeeded", "succeeded"]
    assert served.http.get(f"/v1/jobs/{ids[1]}/output").status_code == 409  # its output was dropped
    for index in (0, 2, 3):
        assert np.abs(npy(served.output(ids[index])) - alone(served, jobs[index])).max() <= 1 / 255
