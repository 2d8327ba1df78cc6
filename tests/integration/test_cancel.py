"""Cancelling stops every rank at the same step boundary and skips the VAE decode; the
group stays usable (no restart). Runs the real tiny Flux pipeline split over 2 ranks."""

from __future__ import annotations

from pathlib import Path

import pytest

from para_attn_server.testing import Server

pytestmark = pytest.mark.timeout(180)

STEPS = 20
HOLD_AT = 3


@pytest.fixture(scope="module")
def decode_log(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("decode") / "decodes.log"


@pytest.fixture(scope="module")
def server(launch, decode_log: Path) -> Server:
    return launch(
        "--model", "tests.predictors:InstrumentedTiny", "--num-devices", "2", "-o", f"decode_log={decode_log}",
        "--cancel-grace", "10",
    )  # fmt: skip


def decodes(log: Path) -> list[str]:
    return log.read_text().splitlines() if log.exists() else []


def test_a_finished_job_decodes_once_on_rank_0(server: Server, decode_log: Path) -> None:
    # Shows the decode log sees decodes, so its silence below means something.
    before = decodes(decode_log)
    job = server.run(prompt="whole", num_inference_steps=STEPS)
    assert job["state"] == "succeeded"
    assert job["step"] == STEPS
    assert decodes(decode_log) == [*before, "rank 0"]


def test_cancelling_a_running_job_stops_within_one_step_and_skips_decode(
    server: Server, decode_log: Path, tmp_path: Path
) -> None:
    before = decodes(decode_log)
    hold = tmp_path / "hold"
    job_id = server.submit(prompt="stopped", num_inference_steps=STEPS, hold_at_step=HOLD_AT, hold=str(hold))
    # Every rank now computes step HOLD_AT and waits at its end, before that step's boundary.
    server.wait_running(job_id, step=HOLD_AT - 1)
    response = server.http.post(f"/v1/jobs/{job_id}/cancel")
    assert (response.status_code, response.json()["state"]) == (200, "running")
    hold.touch()

    job = server.wait(job_id)
    assert job["state"] == "cancelled"
    # Stopped at the boundary the cancel reached first: HOLD_AT, or the next one if the
    # cancel message reached rank 0 just after it decided at HOLD_AT.
    assert HOLD_AT <= job["step"] <= HOLD_AT + 1
    assert decodes(decode_log) == before
    assert server.restarts() == 0

    after = server.run(prompt="after", num_inference_steps=2)
    assert after["state"] == "succeeded"
    assert decodes(decode_log) == [*before, "rank 0"]
    assert server.restarts() == 0


def test_cancelling_a_queued_job_means_it_never_runs(server: Server, decode_log: Path, tmp_path: Path) -> None:
    hold = tmp_path / "hold"
    first = server.submit(prompt="first", hold_at_step=1, hold=str(hold))
    server.wait_running(first)
    queued = server.submit(prompt="queued")
    response = server.http.post(f"/cancel/{queued}")
    assert (response.status_code, response.json()["state"]) == (200, "cancelled")
    hold.touch()
    assert server.wait(first)["state"] == "succeeded"
    job = server.http.get(f"/v1/jobs/{queued}").json()
    assert job["state"] == "cancelled"
    assert "started_at" not in job
    assert server.http.get(f"/get_output/{queued}").status_code == 404
