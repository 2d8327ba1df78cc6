"""Groups that join and leave while the service serves: one queue feeds them all; a group
taken out at once (its host lost) runs its job again elsewhere; a drained group finishes its
job and gets no new one, or past the drain's time stops it to run elsewhere, an attempt
that does not count toward --max-attempts."""

from __future__ import annotations

import asyncio

import pytest

from para_attn_server.engine.service import JobService
from para_attn_server.records import JobState
from para_attn_server.settings import JobSettings
from para_attn_server.workers.outcome import JobOutcome
from tests.unit.fakes import FakeGroup, MakeService, deadline

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(60, method="thread")]


@pytest.fixture
def settings() -> JobSettings:
    # max_attempts=1: a lost run fails the job; a planned (drain) stop must not.
    return JobSettings(max_queue=8, restart_backoff=0.0, job_timeout=None, max_attempts=1)


async def joined(service: JobService, index: int = 1) -> FakeGroup:
    group = FakeGroup(index=index, host="joined")
    service.add_group(group)
    await deadline(group.start_called.wait())  # FakeGroup.start is ready as soon as it is entered
    assert group.ready
    return group


async def test_a_group_added_while_serving_takes_jobs_from_the_one_queue(
    make_service: MakeService, group: FakeGroup
) -> None:
    service = await make_service()
    _first, _ = await service.accept({"prompt": "on the first"})
    await group.next_run()  # the first group is busy
    other = await joined(service)
    second, _ = await service.accept({"prompt": "on the joined"})
    run = await other.next_run()
    assert run.job_id == second.id
    run.succeed()
    await deadline(second.done.wait())
    assert (second.record.group, second.record.host) == (1, "joined")
    assert service.runs_by_host == {"fake-host": 1, "joined": 1}
    assert [g.index for g in service.groups] == [0, 1]


async def test_a_first_start_that_fails_refuses_instead_of_retrying(make_service: MakeService) -> None:
    service = await make_service()
    refused: asyncio.Future[str] = asyncio.get_running_loop().create_future()
    bad = FakeGroup(index=1)
    bad.fail_starts = ["setup failed on rank 0: no such model here"]
    service.add_group(bad, refused=refused.set_result)
    assert await deadline(refused) == "setup failed on rank 0: no such model here"
    assert bad.starts == 1


async def test_a_group_removed_at_once_runs_its_job_again_elsewhere(
    make_service: MakeService, group: FakeGroup, settings: JobSettings
) -> None:
    settings.max_attempts = 2
    service = await make_service()
    other = await joined(service)
    _blocker, _ = await service.accept({"prompt": "keeps group 0 busy"})
    await group.next_run()
    job, _ = await service.accept({"prompt": "on the lost host"})
    lost = "node joined left: rank 0 (pid 9) closed its control connection"
    (await other.next_run()).finish(JobOutcome("failed", error=lost, lost=True))  # as the real group reports it
    other.crash(lost)
    await deadline(service.remove_group(other, "host joined lost"))
    assert other.stops == 1
    assert other not in service.groups
    assert job.state is JobState.QUEUED
    assert job.record.attempts[0].fault.startswith("node joined left")
    group.current.succeed()
    (await group.next_run()).succeed()  # the requeued job, on the group that is left
    await deadline(job.done.wait())
    assert job.state is JobState.SUCCEEDED


async def test_a_drained_group_finishes_its_job_and_gets_no_new_one(
    make_service: MakeService, group: FakeGroup
) -> None:
    service = await make_service()
    other = await joined(service)
    await service.accept({"prompt": "on group 0"})
    await group.next_run()
    job, _ = await service.accept({"prompt": "on the draining group"})
    run = await other.next_run()
    removal = asyncio.ensure_future(service.remove_group(other, "host joined drained", drain=30))
    later, _ = await service.accept({"prompt": "must wait for group 0"})
    assert service.dispatcher.take() is None  # no group may take it: group 0 is busy, the other drains
    assert other.runs.empty()
    assert later.state is JobState.QUEUED
    run.succeed()
    await deadline(removal)
    assert job.state is JobState.SUCCEEDED
    assert not job.record.attempts
    assert other not in service.groups
    group.current.succeed()
    assert (await group.next_run()).job_id == later.id


async def test_past_the_drain_time_the_job_stops_and_runs_elsewhere_as_a_planned_attempt(
    make_service: MakeService, group: FakeGroup
) -> None:
    service = await make_service()  # max_attempts=1: only a planned attempt may run again
    other = await joined(service)
    await service.accept({"prompt": "on group 0"})
    await group.next_run()
    job, _ = await service.accept({"prompt": "too long for the drain"})
    await other.next_run()
    await deadline(service.remove_group(other, "host joined drained", drain=0.05))
    assert other.cancelled == [job.id]  # stopped by a cancel, not a fault
    assert job.state is JobState.QUEUED
    assert not job.cancel_requested
    (attempt,) = job.record.attempts
    assert (attempt.planned, attempt.fault, attempt.host) == (True, "host joined drained", "joined")
    group.current.succeed()
    (await group.next_run()).succeed()
    await deadline(job.done.wait())
    assert job.state is JobState.SUCCEEDED
    assert [a.planned for a in service.view(job).attempts or []] == [True, False]
