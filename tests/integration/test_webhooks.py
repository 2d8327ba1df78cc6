"""Webhooks from a real server (the noop predictor on 2 ranks, whose ``steps`` and
``step_seconds`` give progress) to a real receiver that verifies every signature with
``standardwebhooks``; and a predictor that has a ``webhook`` parameter, refused at startup."""

from __future__ import annotations

import itertools
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from pytest_httpserver import HTTPServer

from para_attn_server.testing import CLI, Server, server_env
from tests.webhook_receiver import SECRET, Receiver

pytestmark = pytest.mark.timeout(180)


@pytest.fixture(scope="module")
def server(receiving: HTTPServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    # The secret from the environment: an operator need not put it on a command line.
    args = ["--model", "noop", "--num-devices", "2", "--webhook-backoff", "0.1"]
    args += ["--webhook-allow-host", f"{receiving.host}:{receiving.port}"]
    env = server_env(PARA_ATTN_SERVER_WEBHOOK_SECRET=SECRET)
    with Server(args, tmp_path_factory.mktemp("webhooks"), env=env) as server:
        yield server


def test_a_jobs_start_progress_and_end_arrive_signed_and_progress_at_most_once_a_second(
    server: Server, receiver: Receiver
) -> None:
    job = server.run(steps=8, step_seconds=0.3, webhook=receiver.url)  # 2.4 s of steps

    deliveries = receiver.of_job(job["id"])

    assert job["state"] == "succeeded"  # the ranks never saw the webhook fields
    events = [d.event for d in deliveries]
    assert (events[0], events[-1]) == ("start", "completed")
    assert set(events[1:-1]) == {"progress"}
    steps = [d.job["step"] for d in deliveries[1:-1]]
    assert steps == sorted(set(steps))
    assert steps[-1] == 8  # the last step is kept
    assert 2 <= len(steps) <= 5  # not one per step (8)
    progress = deliveries[1:-1]
    gaps = [later.at - earlier.at for earlier, later in itertools.pairwise(progress)]
    assert all(gap >= 0.9 for gap in gaps[:-1]), gaps  # the last one may follow sooner: the job ended
    assert deliveries[-1].job == job  # the job as GET /v1/jobs/{id} shows it


def test_a_receiver_that_fails_is_tried_three_times_and_the_job_still_succeeds(
    server: Server, receiver: Receiver
) -> None:
    receiver.answers = [502, 503, 500]
    job = server.run(webhook=receiver.url, webhook_events_filter=["completed"])
    attempts = receiver.wait(3)
    server.log.wait_for(rf"job {job['id']}: webhook .* not delivered after 3 tries \(HTTP 500\)")

    assert job["state"] == "succeeded"
    assert len({d.headers["Webhook-Id"] for d in attempts}) == 1


def test_a_cancelled_job_is_a_completed_event(server: Server, receiver: Receiver) -> None:
    job_id = server.submit(steps=1000, step_seconds=0.02, webhook=receiver.url, webhook_events_filter=["completed"])
    server.wait_running(job_id, step=1)
    assert server.http.post(f"/v1/jobs/{job_id}/cancel").status_code == 200

    (delivery,) = receiver.of_job(job_id)

    assert delivery.job["state"] == "cancelled"


def test_a_host_the_operator_did_not_list_is_a_400_naming_the_field(server: Server) -> None:
    response = server.http.post("/v1/jobs", json={"webhook": "http://example.com/hook"})

    assert response.status_code == 400
    assert response.json() == {"error": "webhook: example.com:80 is not an allowed webhook host", "field": "webhook"}


def test_a_predictor_whose_predict_takes_webhook_is_refused_at_startup(tmp_path: Path) -> None:
    result = subprocess.run(
        [str(CLI), "--model", "tests.predictors:TakesWebhook", "--port", "0", "--output-dir", str(tmp_path)],
        env=server_env(),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )

    assert result.returncode == 2, result.stderr
    assert "request field 'webhook' of plugin 'webhooks' clashes with a parameter of TakesWebhook.predict" in (
        result.stderr
    )
