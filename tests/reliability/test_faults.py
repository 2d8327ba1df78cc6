"""A fault matrix against real ranks: each fault fails the job it hit with a reason that
names it, the jobs queued behind that job all succeed, the next job succeeds, and when the
group had to restart it was ready again within its setup time plus 5 seconds.

Every faulty job first waits on a hold file, so the jobs queued behind it are in the queue
before the fault strikes. Times come from the server: a job's ``finished_at`` and the
group's "generation N starting / ready / fault" log lines. Each row goes to the report
(see conftest.py), which is where the README's "Faults tried" table comes from.
"""

from __future__ import annotations

import json
import os
import re
import signal
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from para_attn_server.testing import Server, pid_gone
from tests.reliability.support import Report, generation, generation_span

pytestmark = pytest.mark.timeout(300)

JOB_TIMEOUT = 5
MAX_OUTPUT_BYTES = 4096
QUEUED = 3
MARGIN = 5.0  # seconds a recovery may take beyond the setups it had to run
BACKOFF = 1.0  # ServiceSettings.restart_backoff: the wait after a failed restart
SECTION = "Faults tried"


@pytest.fixture(scope="module")
def marker(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("setup-fault") / "fail-next-setup"


@pytest.fixture(scope="module")
def server(launch: Callable[..., Server], marker: Path) -> Server:
    return launch(
        "--model", "tests.predictors:Faulty", "--num-devices", "2", "--job-timeout", str(JOB_TIMEOUT),
        "--max-output-bytes", str(MAX_OUTPUT_BYTES), "-o", f"setup_fault_marker={marker}",
        "--max-attempts", "1",  # what a fault does to its job (a second attempt is test_requeue.py's)
    )  # fmt: skip


@pytest.fixture(scope="module")
def first_setup(server: Server) -> float:
    """Seconds the first generation took from launch to ready (the server's clock)."""
    started, ended, how = generation_span(server, 1)
    assert how == "ready"
    return ended - started


@dataclass
class Struck:
    job: dict[str, Any]
    restarts: int
    recovery_s: float  # the failed job's end -> the group ready again (0: it never stopped)
    setup_s: float  # the setups the recovery ran, summed (failed ones included)
    bound_s: float


def strike(
    server: Server,
    tmp_path: Path,
    inputs: dict[str, Any],
    *,
    trigger: Callable[[str, Path], None] | None = None,
    expect_restarts: int,
    failed_attempts: int = 0,
) -> Struck:
    """Run one faulty job with QUEUED jobs behind it; check that they and the next job
    succeed and that the group restarted ``expect_restarts`` times; measure the recovery."""
    restarts, gen, pids = server.restarts(), generation(server), server.rank_pids()
    hold = tmp_path / "hold"
    faulty = server.submit(**inputs, hold=str(hold), tag="faulty")
    server.wait_running(faulty)
    queued = [server.submit(tag=f"queued {k}") for k in range(QUEUED)]
    (trigger or (lambda job_id, hold: hold.touch()))(faulty, hold)

    job = server.wait(faulty)
    assert job["state"] == "failed", job
    # The reason names the fault, never a source file or path of this machine (gloo's
    # errors carry their C++ source location; the log keeps them).
    assert not re.search(r"Traceback|\w\.(py|cc|cpp|h)\b|/__w/|/work/", job["error"]), job["error"]
    for k, job_id in enumerate(queued):  # no job behind the fault is lost
        assert server.wait(job_id)["state"] == "succeeded", server.log.tail()
        assert json.loads(server.output(job_id))["tag"] == f"queued {k}"
    assert server.run(tag="next")["state"] == "succeeded"
    assert server.restarts() == restarts + expect_restarts

    if not expect_restarts:  # every rank left the job: the same processes serve on
        assert server.rank_pids() == pids
        assert generation(server) == gen
        return Struck(job, 0, 0.0, 0.0, 0.0)
    assert all(pid_gone(pid) for pid in pids)
    attempts = [generation_span(server, number) for number in range(gen + 1, gen + 2 + failed_attempts)]
    assert [how for _, _, how in attempts] == ["fault"] * failed_attempts + ["ready"]
    setups = sum(ended - started for started, ended, _ in attempts)
    recovery = attempts[-1][1] - job["finished_at"]
    bound = setups + failed_attempts * BACKOFF + MARGIN
    assert 0 < recovery <= bound, (recovery, attempts, server.log.tail())
    return Struck(job, expect_restarts, recovery, setups, bound)


def record(report: Report, fault: str, happens: str, struck: Struck) -> None:
    report.add(
        SECTION,
        fault=fault,
        what_happens=happens,
        job_reason=struck.job["error"],
        restarts=struck.restarts,
        recovery_s=round(struck.recovery_s, 2),
        setup_s=round(struck.setup_s, 2),
        bound_s=round(struck.bound_s, 2),
        queued_behind=f"{QUEUED}/{QUEUED} succeeded",
    )


def test_first_setup_time_is_recorded(server: Server, first_setup: float, report: Report) -> None:
    assert first_setup > 0
    report.add("Setup", server="Faulty, 2 ranks", first_setup_s=round(first_setup, 2))


@pytest.mark.parametrize(("rank", "peer"), [(0, 1), (1, 0)])
def test_exception_in_predict_on_one_rank(server: Server, tmp_path: Path, report: Report, rank: int, peer: int) -> None:
    struck = strike(server, tmp_path, {"fault": "raise", "fault_rank": rank}, expect_restarts=1)
    error = struck.job["error"]
    assert error.startswith(f"rank {rank}: RuntimeError: injected fault on rank {rank}")
    assert f"rank(s) [{peer}] were left waiting in a collective; the worker group was restarted" in error
    record(report, f"exception in predict on rank {rank}", f"rank {peer} waits in its all_reduce; restart", struck)


def test_rank_killed_by_sigkill_mid_job(server: Server, tmp_path: Path, report: Report) -> None:
    victim = server.rank_pids()[1]

    def kill_at_step_2(job_id: str, hold: Path) -> None:
        hold.touch()
        server.wait_running(job_id, step=2)
        os.kill(victim, signal.SIGKILL)

    inputs = {"steps": 1000, "step_seconds": 0.01}
    struck = strike(server, tmp_path, inputs, trigger=kill_at_step_2, expect_restarts=1)
    assert struck.job["error"].startswith(f"rank 1 (pid {victim}) killed by SIGKILL; the worker group was restarted")
    server.log.wait_for(r"pair\.cc", timeout=30)  # gloo's own words about it stay in the log
    record(report, "rank 1 killed by SIGKILL mid-job (step 2)", "its exit is seen at once; restart", struck)


@pytest.mark.parametrize(
    ("fault", "where"),
    [("hang_collective", "inside a collective no peer enters"), ("hang_outside", "outside any collective")],
)
def test_rank_hanging(server: Server, tmp_path: Path, report: Report, fault: str, where: str) -> None:
    inputs = {"fault": fault, "fault_rank": 1, "fault_step": 2}
    struck = strike(server, tmp_path, inputs, expect_restarts=1)
    assert struck.job["error"] == f"job timed out after {JOB_TIMEOUT} s; the worker group was restarted"
    happens = f"--job-timeout ({JOB_TIMEOUT} s) ends it; restart"
    record(report, f"rank 1 hangs {where} (step 2)", happens, struck)


def test_setup_failing_on_one_rank_at_a_restart_is_retried(
    server: Server, tmp_path: Path, report: Report, marker: Path
) -> None:
    marker.touch()  # the next setup of rank 1 fails, once
    pid = server.rank_pids()[1]
    inputs = {"fault": "exit", "fault_rank": 1, "fault_step": 2}
    struck = strike(server, tmp_path, inputs, expect_restarts=1, failed_attempts=1)
    assert struck.job["error"].startswith(f"rank 1 (pid {pid}) exited with code 13")
    assert not marker.exists()
    failed = server.log.wait_for(r"restart failed: (setup failed on rank 1: .*); retrying in 1 s")
    assert failed[1] == "setup failed on rank 1: RuntimeError: injected setup fault on rank 1"
    assert server.status()["last_fault"] == failed[1]
    happens = "rank 1 exits (code 13); the restart's setup fails on rank 1; retried after 1 s back-off; ready"
    record(report, "setup fails on rank 1 at the restart", happens, struck)


def test_output_larger_than_max_output_bytes(server: Server, tmp_path: Path, report: Report) -> None:
    struck = strike(server, tmp_path, {"pad": 2 * MAX_OUTPUT_BYTES}, expect_restarts=0)
    assert struck.job["error"].startswith("output too large: ")
    assert struck.job["error"].endswith(f"exceeds the limit of {MAX_OUTPUT_BYTES} bytes")
    record(report, f"output over --max-output-bytes ({MAX_OUTPUT_BYTES})", "rank 0 refuses it; no restart", struck)


# ---- a real pipeline: the tiny Flux, split over 2 ranks with para-attn --------------------


@pytest.fixture(scope="module")
def tiny(launch: Callable[..., Server]) -> Server:
    return launch("--model", "tests.predictors:CallbackFaultTiny", "--num-devices", "2")


def test_exception_in_the_step_callback_of_a_real_pipeline(tiny: Server, tmp_path: Path, report: Report) -> None:
    restarts, pids = tiny.restarts(), tiny.rank_pids()
    hold = tmp_path / "hold"
    faulty = tiny.submit(prompt="fails at step 2", fault_step=2, hold=str(hold))
    tiny.wait_running(faulty)
    queued = [tiny.submit(prompt=f"queued {k}") for k in range(QUEUED)]
    hold.touch()

    job = tiny.wait(faulty)
    assert job["state"] == "failed"
    # Raised inside diffusers' denoising loop on both ranks at the same step: both leave it.
    assert job["error"] == "rank 0: RuntimeError: injected fault in the step callback on rank 0 at step 2"
    assert job["step"] == 1  # the boundary of step 2 never came
    for job_id in queued:
        assert tiny.wait(job_id)["state"] == "succeeded"
        assert tiny.output(job_id).startswith(b"\x89PNG")
    assert tiny.run(prompt="next")["state"] == "succeeded"
    assert tiny.restarts() == restarts
    assert tiny.rank_pids() == pids
    record(
        report,
        "exception in callback_on_step_end (tiny Flux pipeline, both ranks, step 2)",
        "every rank leaves the pipeline at the same step; no restart",
        Struck(job, 0, 0.0, 0.0, 0.0),
    )
