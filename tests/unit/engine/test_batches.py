"""The job service with batching on (--max-batch 3): jobs with equal batch keys leave the
queue together and run as one group call, each keeping its own progress, outcome and output;
one cancelled out of a running batch ends at once while the others finish."""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any

import pytest

from para_attn_server.engine.service import JobService
from para_attn_server.settings import JobSettings
from para_attn_server.workers.outcome import JobOutcome
from tests.unit.fakes import EchoPredictor, FakeGroup, MakeService, deadline

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(60, method="thread")]


class BatchedEcho(EchoPredictor):
    """Jobs with the same ``repeat`` may share a call; ``repeat`` 0 never batches."""

    def batch_key(self, inputs: dict[str, Any]) -> Hashable | None:
        return inputs["repeat"] or None


@pytest.fixture
def settings() -> JobSettings:
    return JobSettings(max_queue=16, restart_backoff=0.0, job_timeout=None, max_batch=3)


@pytest.fixture
async def service(make_service: MakeService) -> JobService:
    return await make_service(BatchedEcho())


async def busy(service: JobService, group: FakeGroup) -> Any:
    """A job holding the group (not batchable), so the next ones queue up."""
    await service.accept({"prompt": "hold", "repeat": 0})
    return await group.next_run()


async def test_compatible_jobs_run_as_one_call_and_each_keeps_its_output(service: JobService, group: FakeGroup) -> None:
    first = await busy(service, group)
    jobs = [(await service.accept({"prompt": f"p{n}", "repeat": 2}))[0] for n in range(4)]
    odd, _ = await service.accept({"prompt": "other", "repeat": 5})
    first.succeed()
    run = await group.next_run()
    assert run.job_id == jobs[0].id
    assert [member.job_id for member in run.batch] == [jobs[1].id, jobs[2].id]  # up to --max-batch, in order
    assert [member.inputs["prompt"] for member in run.batch] == ["p1", "p2"]
    assert all(job.record.batch_size == 3 and job.state.value == "running" for job in jobs[:3])
    run.on_progress(1, 4)
    for member in run.batch:
        member.on_progress(1, 4)
    assert [job.record.step for job in jobs[:3]] == [1, 1, 1]
    members = {m.job_id: JobOutcome("succeeded", output=m.job_id.encode(), file_type="txt") for m in run.batch}
    run.finish(JobOutcome("succeeded", output=b"leader", file_type="txt", members=members))
    await deadline(jobs[2].done.wait())
    assert [service.held_output(job).raw() for job in jobs[:3]] == [b"leader", jobs[1].id.encode(), jobs[2].id.encode()]  # type: ignore[union-attr]
    rest = await group.next_run()  # the fourth, and the job of another key, each alone
    assert rest.job_id == jobs[3].id
    assert not rest.batch
    rest.succeed()
    assert (await group.next_run()).job_id == odd.id
    assert service.metrics().batch_sizes == {1: 3, 3: 1}
    assert service.view(jobs[0]).batch_size == 3


async def test_one_job_cancelled_out_of_a_running_batch_ends_at_once_and_the_others_finish(
    service: JobService, group: FakeGroup
) -> None:
    first = await busy(service, group)
    jobs = [(await service.accept({"prompt": f"p{n}", "repeat": 2}))[0] for n in range(3)]
    first.succeed()
    run = await group.next_run()
    assert service.cancel(jobs[1].id) is jobs[1]
    assert jobs[1].state.value == "cancelled"
    assert group.cancelled == []  # the batch goes on for the others
    run.batch[0].on_progress(2, 4)  # its progress no longer moves it
    assert jobs[1].record.step is None
    members = {m.job_id: JobOutcome("succeeded", output=b"m", file_type="txt") for m in run.batch}
    run.finish(JobOutcome("succeeded", output=b"leader", file_type="txt", members=members))
    await deadline(jobs[2].done.wait())
    assert [job.state.value for job in jobs] == ["succeeded", "cancelled", "succeeded"]
    assert service.held_output(jobs[1]) is None  # its output was dropped


async def test_cancelling_every_job_of_a_batch_stops_the_call(service: JobService, group: FakeGroup) -> None:
    group.stop_on_cancel = False
    first = await busy(service, group)
    jobs = [(await service.accept({"prompt": f"p{n}", "repeat": 2}))[0] for n in range(2)]
    first.succeed()
    run = await group.next_run()
    service.cancel(jobs[1].id)
    assert group.cancelled == []
    service.cancel(jobs[0].id)
    assert group.cancelled == [jobs[0].id]  # the group knows the batch by its first job
    run.finish(JobOutcome("cancelled"))
    await deadline(jobs[0].done.wait())
    assert [job.state.value for job in jobs] == ["cancelled", "cancelled"]


async def test_a_batch_that_fails_fails_every_job_with_the_reason(service: JobService, group: FakeGroup) -> None:
    first = await busy(service, group)
    jobs = [(await service.accept({"prompt": f"p{n}", "repeat": 3}))[0] for n in range(2)]
    first.succeed()
    run = await group.next_run()
    run.finish(JobOutcome("failed", error="rank 1: RuntimeError: out of memory"))
    await deadline(jobs[1].done.wait())
    assert [(job.state.value, job.error) for job in jobs] == [("failed", "rank 1: RuntimeError: out of memory")] * 2
