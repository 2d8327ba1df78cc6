"""A run cut short by its group's loss (``JobOutcome.lost``) puts the job back at the head of
the queue, up to --max-attempts runs; a failure of the job's own is final."""

from __future__ import annotations

import asyncio

import pytest

from para_attn_server.engine.service import JobService
from para_attn_server.records import JobState
from para_attn_server.settings import JobSettings
from para_attn_server.workers.outcome import JobOutcome
from tests.unit.fakes import FakeGroup, deadline

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(60, method="thread")]
LOST = JobOutcome("failed", error="rank 1 (pid 7) killed by SIGKILL", lost=True)


@pytest.fixture
def settings() -> JobSettings:
    return JobSettings(max_queue=8, restart_backoff=0.0, job_timeout=None, max_attempts=2)


async def test_a_lost_run_goes_back_to_the_head_of_the_queue_and_runs_again(
    service: JobService, group: FakeGroup
) -> None:
    job, _ = await service.accept({"prompt": "survivor"})
    first = await group.next_run()
    urgent, _ = await service.accept({"prompt": "urgent", "priority": 50})
    events = []
    service.add_listener(lambda kind, record: events.append((kind, record.id, record.state)))
    first.finish(LOST)
    second = await group.next_run()
    assert second.job_id == job.id  # ahead of the waiting job, whatever its priority
    assert ("requeued", job.id, JobState.QUEUED) in events
    assert job.record.attempts[0].fault == "rank 1 (pid 7) killed by SIGKILL"
    second.succeed()
    await deadline(job.done.wait())
    view = service.view(job)
    assert view.state == "succeeded"
    assert view.attempts is not None
    assert [attempt.fault for attempt in view.attempts] == ["rank 1 (pid 7) killed by SIGKILL", None]
    assert (await group.next_run()).job_id == urgent.id
    assert service.metrics().requeued == 1


async def test_after_the_last_attempt_the_job_fails_with_every_reason(service: JobService, group: FakeGroup) -> None:
    job, _ = await service.accept({"prompt": "doomed"})
    (await group.next_run()).finish(LOST)
    (await group.next_run()).finish(JobOutcome("failed", error="heartbeats stopped", lost=True))
    await deadline(job.done.wait())
    assert job.state is JobState.FAILED
    assert job.error == "attempt 1 (group 0): rank 1 (pid 7) killed by SIGKILL; attempt 2 (group 0): heartbeats stopped"
    assert len(service.view(job).attempts or []) == 2


async def test_a_failure_of_the_jobs_own_is_final(service: JobService, group: FakeGroup) -> None:
    job, _ = await service.accept({"prompt": "raises"})
    (await group.next_run()).finish(JobOutcome("failed", error="rank 0: ValueError: bad"))
    await deadline(job.done.wait())
    assert (job.state, job.error, job.record.attempts) == (JobState.FAILED, "rank 0: ValueError: bad", ())


async def test_a_job_whose_deadline_passed_while_it_first_ran_is_not_expired_when_requeued(
    service: JobService, group: FakeGroup
) -> None:
    job, _ = await service.accept({"prompt": "late", "max_queue_seconds": 0.01})
    first = await group.next_run()
    requeued = asyncio.Event()
    service.add_listener(lambda kind, record: requeued.set() if kind == "requeued" else None)
    group.ready = False  # it waits in the queue after its lost run
    first.finish(LOST)
    await deadline(requeued.wait())
    service._expire_queued(job, 0.01)  # its deadline's timer, late: it started once, it stays
    assert job.state is JobState.QUEUED
    group.ready = True
    service.dispatcher.wake()
    (await group.next_run()).succeed()
    await deadline(job.done.wait())
    assert job.state is JobState.SUCCEEDED
