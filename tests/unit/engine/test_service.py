"""jobs.JobService over a fake worker group: queue, states, cancel, restarts, outputs, TTL,
drain. The test plays the worker group: it takes each job from ``group.runs`` and ends it."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from para_attn_server import InputError, hookimpl
from para_attn_server.engine.registry import Job
from para_attn_server.engine.service import JobService
from para_attn_server.errors import IdConflictError, JournalError, LimitError, NotReadyError, QueueFullError, SetupError
from para_attn_server.plugin.manager import Plugins
from para_attn_server.records import JobState
from para_attn_server.schema import InputSchema, RequestField
from para_attn_server.storage.outputs import OutputStore
from para_attn_server.workers.outcome import JobOutcome
from tests.unit.fakes import FakeGroup, LegacyPredictor, MakeService, deadline

# The waits in these tests have a deadline (fakes.deadline); the timeout catches a hang
# anywhere else. Its thread method ends the run with every stack: the signal method would
# interrupt anyio's runner mid-test and leave the fixture teardown waiting forever.
pytestmark = [pytest.mark.anyio, pytest.mark.timeout(60, method="thread")]


async def finished(job: Job) -> Job:
    await deadline(job.done.wait())
    return job


def submit(service: JobService, prompt: str = "a", job_id: str | None = None, **inputs: Any) -> Job:
    job, created = service.submit({"prompt": prompt, **inputs}, job_id)
    assert created
    return job


# ---- queue ----------------------------------------------------------------------------------


async def test_jobs_run_one_at_a_time_in_submission_order(service: JobService, group: FakeGroup) -> None:
    jobs = [submit(service, prompt) for prompt in "abc"]

    for index, expected in enumerate(jobs):
        run = await group.next_run()
        assert run.job_id == expected.id
        assert [job.state for job in jobs] == (
            [JobState.SUCCEEDED] * index + [JobState.RUNNING] + [JobState.QUEUED] * (len(jobs) - index - 1)
        )
        run.succeed()
        await finished(expected)


async def test_run_gets_the_jobs_inputs_and_timeout(service: JobService, group: FakeGroup) -> None:
    service.settings.job_timeout = 12.5
    job = submit(service, "a cat", repeat=2)

    run = await group.next_run()

    assert (run.job_id, run.inputs, run.timeout) == (job.id, {"prompt": "a cat", "repeat": 2}, 12.5)


async def test_queue_positions_count_from_the_next_job(service: JobService, group: FakeGroup) -> None:
    running = submit(service, "a")
    await group.next_run()
    second, third = submit(service, "b"), submit(service, "c")

    assert [service.view(j).queue_position for j in (running, second, third)] == [None, 0, 1]


async def test_full_queue_refuses_a_job_and_keeps_the_others(service: JobService, group: FakeGroup) -> None:
    submit(service, "running")
    await group.next_run()  # the running job does not take a queue slot
    waiting = [submit(service, str(i)) for i in range(service.settings.max_queue)]

    with pytest.raises(QueueFullError, match=f"{service.settings.max_queue} jobs waiting"):
        submit(service, "one too many")

    assert list(service.queue) == waiting
    assert len(service.jobs) == service.settings.max_queue + 1
    assert service.counters["rejected_queue_full"] == 1


async def test_submit_before_the_group_started_is_not_ready(make_service: MakeService) -> None:
    service = await make_service(start=False)

    with pytest.raises(NotReadyError):
        submit(service)


async def test_first_start_failure_raises_setup_error(make_service: MakeService, group: FakeGroup) -> None:
    group.fail_starts = ["setup failed on rank 1: no weights"]

    with pytest.raises(SetupError, match="no weights"):
        await make_service()


async def test_validation_error_queues_nothing(service: JobService) -> None:
    with pytest.raises(InputError) as info:
        submit(service, "forbidden")

    assert info.value.field == "prompt"
    assert service.jobs == {}


async def test_output_path_outside_the_directory_queues_nothing(service: JobService, store: OutputStore) -> None:
    with pytest.raises(InputError) as info:
        submit(service, output_path="../escape.png")

    assert info.value.field == "output_path"
    assert service.jobs == {}
    assert not (store.root.parent / "escape.png").exists()


# ---- idempotent submit ------------------------------------------------------------------------


async def test_same_id_and_inputs_returns_the_same_job(service: JobService) -> None:
    job = submit(service, "a", job_id="7d5bb4b4-0c0e-4c55-9d4b-2a4d8f1b6a70", repeat=2)

    again, created = service.submit({"repeat": 2, "prompt": "a"}, "7d5bb4b4-0c0e-4c55-9d4b-2a4d8f1b6a70")

    assert again is job
    assert not created
    assert service.counters["submitted"] == 1


async def test_same_id_with_other_inputs_is_an_input_error_on_id(service: JobService) -> None:
    submit(service, "a", job_id="7d5bb4b4-0c0e-4c55-9d4b-2a4d8f1b6a70")

    with pytest.raises(InputError) as info:
        service.submit({"prompt": "b"}, "7d5bb4b4-0c0e-4c55-9d4b-2a4d8f1b6a70")

    assert info.value.field == "id"
    assert isinstance(info.value, IdConflictError)  # the type the HTTP layer answers 409 for


async def test_same_id_after_the_job_ended_returns_the_ended_job(service: JobService, group: FakeGroup) -> None:
    job = submit(service, job_id="7d5bb4b4-0c0e-4c55-9d4b-2a4d8f1b6a70")
    (await group.next_run()).succeed()
    await finished(job)

    again, created = service.submit({"prompt": "a"}, job.id)

    assert (again, created) == (job, False)
    assert again.state is JobState.SUCCEEDED


# ---- cancel ---------------------------------------------------------------------------------


async def test_cancel_queued_job_ends_it_at_once_and_the_next_one_runs(service: JobService, group: FakeGroup) -> None:
    first, second, third = submit(service, "a"), submit(service, "b"), submit(service, "c")
    run = await group.next_run()

    assert service.cancel(second.id) is second

    assert second.state is JobState.CANCELLED
    assert second.done.is_set()
    assert group.cancelled == []  # the ranks never heard of it
    run.succeed()
    assert (await group.next_run()).job_id == third.id
    assert first.state is JobState.SUCCEEDED


async def test_cancel_running_job_asks_the_group_and_waits_for_its_answer(
    service: JobService, group: FakeGroup
) -> None:
    group.stop_on_cancel = False
    job = submit(service)
    run = await group.next_run()

    assert service.cancel(job.id) is job

    assert group.cancelled == [job.id]
    assert job.state is JobState.RUNNING
    assert job.cancel_requested
    run.finish(JobOutcome("cancelled"))
    assert (await finished(job)).state is JobState.CANCELLED


@pytest.mark.parametrize("job_id", ["no-such-job", "ended"])
async def test_cancel_of_an_unknown_or_ended_job_returns_none(
    service: JobService, group: FakeGroup, job_id: str
) -> None:
    job = submit(service)
    (await group.next_run()).succeed()
    await finished(job)

    assert service.cancel(job.id if job_id == "ended" else job_id) is None
    assert job.state is JobState.SUCCEEDED


# ---- outcomes ---------------------------------------------------------------------------------


async def test_output_bytes_are_written_to_the_servers_own_file(
    service: JobService, group: FakeGroup, store: OutputStore
) -> None:
    job = submit(service)
    (await group.next_run()).succeed(b"\x89PNG-bytes", "png")

    await finished(job)

    assert job.state is JobState.SUCCEEDED
    assert job.output_file == store.job_file(job.id, "png")
    store.flush()  # the server's own copy is written behind
    assert job.output_file.read_bytes() == b"\x89PNG-bytes"
    assert job.file_type == "png"
    assert service.view(job).output_url == f"/v1/jobs/{job.id}/output"


def resident_bytes(path: Path) -> int:
    """How much of ``path`` the page cache holds (util-linux ``fincore``)."""
    out = subprocess.run(
        ["fincore", "--bytes", "--noheadings", "--output", "RES", str(path)], check=True, capture_output=True
    )
    return int(out.stdout)


async def test_the_servers_own_copy_leaves_the_page_cache_once_on_disk(
    service: JobService, group: FakeGroup, store: OutputStore
) -> None:
    if shutil.which("fincore") is None:
        pytest.skip("needs util-linux's fincore")
    probe = store.root / "probe"
    probe.write_bytes(os.urandom(1 << 20))
    with probe.open("rb") as file:
        os.fsync(file.fileno())
        os.posix_fadvise(file.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
    if resident_bytes(probe):
        pytest.skip("this file system keeps pages that fadvise drops elsewhere (tmpfs)")
    data = os.urandom(1 << 20)
    job = submit(service)
    (await group.next_run()).succeed(data, "png")

    await finished(job)
    store.flush()

    assert job.output_file is not None
    assert resident_bytes(job.output_file) == 0  # served from memory meanwhile: not held twice
    assert job.output_file.read_bytes() == data


async def test_output_without_file_type_is_bin(service: JobService, group: FakeGroup) -> None:
    job = submit(service)
    (await group.next_run()).finish(JobOutcome("succeeded", output=b"x"))

    assert (await finished(job)).file_type == "bin"


async def test_output_goes_to_the_clients_confined_output_path(
    service: JobService, group: FakeGroup, store: OutputStore
) -> None:
    job = submit(service, output_path="renders/cat.png")
    run = await group.next_run()

    assert run.inputs["output_path"] == "renders/cat.png"  # a new-style predictor never writes it
    run.succeed(b"cat", "png")
    await finished(job)

    assert (store.root / "renders" / "cat.png").read_bytes() == b"cat"
    assert job.output_file == store.root / "renders" / "cat.png"
    assert service.view(job).output_path == "renders/cat.png"


async def test_output_path_that_became_a_directory_fails_the_job(
    service: JobService, group: FakeGroup, store: OutputStore
) -> None:
    job = submit(service, output_path="cat.png")
    run = await group.next_run()
    (store.root / "cat.png").mkdir()

    run.succeed(b"cat", "png")

    assert (await finished(job)).state is JobState.FAILED
    assert job.error is not None
    assert job.error.startswith("could not write the output")


async def test_original_style_predictor_output_goes_to_the_confined_path_through_the_server(
    make_service: MakeService, group: FakeGroup, store: OutputStore
) -> None:
    service = await make_service(LegacyPredictor())
    job = submit(service, output_path="legacy/cat.png")
    run = await group.next_run()

    # The ranks get the client's relative path; the predictor writes a private file and its
    # bytes come back like any output, for the server's own confined write.
    assert run.inputs["output_path"] == "legacy/cat.png"
    run.finish(JobOutcome("succeeded", output=b"written by the predictor", file_type="png"))
    await finished(job)

    assert job.state is JobState.SUCCEEDED
    assert (store.root / "legacy" / "cat.png").read_bytes() == b"written by the predictor"
    assert job.record.reply_with_path
    assert job.file_type == "png"


async def test_success_without_an_output_fails_the_job(service: JobService, group: FakeGroup) -> None:
    job = submit(service)
    (await group.next_run()).finish(JobOutcome("succeeded"))

    assert (await finished(job)).state is JobState.FAILED
    assert job.error == "the predictor returned no output"


@pytest.mark.parametrize(
    ("outcome", "state", "error"),
    [
        (JobOutcome("failed", error="rank 1: ValueError: bad"), JobState.FAILED, "rank 1: ValueError: bad"),
        (JobOutcome("failed"), JobState.FAILED, "failed"),
        (JobOutcome("cancelled"), JobState.CANCELLED, "cancelled"),
    ],
)
async def test_failed_and_cancelled_outcomes_end_the_job_with_their_reason(
    service: JobService, group: FakeGroup, outcome: JobOutcome, state: JobState, error: str
) -> None:
    job = submit(service)
    (await group.next_run()).finish(outcome)

    await finished(job)

    assert (job.state, job.error) == (state, error)
    assert service.finished_by_state[state.value] == 1


async def test_internal_error_fails_the_job_without_details_and_the_queue_goes_on(
    service: JobService, group: FakeGroup
) -> None:
    broken, after = submit(service, "a"), submit(service, "b")
    (await group.next_run()).outcome.set_exception(RuntimeError("secret detail"))

    await finished(broken)

    assert broken.state is JobState.FAILED
    assert broken.error == "internal server error: RuntimeError"
    assert (await group.next_run()).job_id == after.id


async def test_progress_updates_the_job_and_reaches_subscribers(service: JobService, group: FakeGroup) -> None:
    job = submit(service)
    run = await group.next_run()

    async with service.subscribe(job) as events:
        run.on_progress(2, 4)
        event = await deadline(events.get())

    assert event == ("progress", {"step": 2, "total": 4})
    assert (job.step, job.total) == (2, 4)
    assert service.view(job).step == 2


async def test_every_state_change_reaches_the_job_state_changed_hook(
    plugins: Plugins, make_service: MakeService, group: FakeGroup
) -> None:
    seen: list[str] = []

    class Observer:
        @hookimpl
        def job_state_changed(self, job: Job) -> None:
            seen.append(job.state.value)

    plugins.pm.register(Observer())
    service = await make_service()
    job = submit(service)
    (await group.next_run()).succeed()
    await finished(job)

    assert seen == ["queued", "running", "succeeded"]


async def test_a_failing_observer_does_not_break_the_job(
    plugins: Plugins, make_service: MakeService, group: FakeGroup
) -> None:
    class Broken:
        @hookimpl
        def job_state_changed(self, job: Job) -> None:
            raise RuntimeError("observer bug")

    plugins.pm.register(Broken())
    service = await make_service()
    job = submit(service)
    (await group.next_run()).succeed()

    assert (await finished(job)).state is JobState.SUCCEEDED


async def test_listeners_get_every_state_change_and_progress_step_until_removed(
    service: JobService, group: FakeGroup
) -> None:
    seen: list[tuple[str, str, int | None]] = []
    remove = service.add_listener(lambda kind, record: seen.append((kind, record.state.value, record.step)))
    job = submit(service)
    run = await group.next_run()
    run.on_progress(1, 2)
    run.on_progress(2, 2)
    run.succeed()
    await finished(job)
    remove()
    submit(service)

    assert seen == [
        ("state", "queued", None),
        ("state", "running", None),
        ("progress", "running", 1),
        ("progress", "running", 2),
        ("state", "succeeded", 2),
    ]


async def test_a_failing_listener_is_logged_and_the_others_and_the_job_go_on(
    service: JobService, group: FakeGroup, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(kind: str, record: Any) -> None:
        raise RuntimeError("listener bug")

    seen: list[str] = []
    service.add_listener(broken)
    service.add_listener(lambda kind, record: seen.append(kind))
    job = submit(service)
    run = await group.next_run()
    run.on_progress(1, 1)
    run.succeed()

    assert (await finished(job)).state is JobState.SUCCEEDED
    assert seen == ["state", "state", "progress", "state"]
    failures = [r for r in caplog.records if r.exc_info and str(r.exc_info[1]) == "listener bug"]
    assert len(failures) == 4


async def test_the_ranks_get_the_inputs_without_the_fields_plugins_added(
    make_service: MakeService, group: FakeGroup
) -> None:
    service = await make_service()
    service.schema = InputSchema(service.predictor, [RequestField("hook", str | None, None, "hooks")])
    job = submit(service, "a cat", hook="http://receiver/")

    run = await group.next_run()

    assert job.inputs["hook"] == "http://receiver/"
    assert run.inputs == {"prompt": "a cat"}


# ---- faults and restarts ----------------------------------------------------------------------


async def test_fault_while_idle_restarts_the_group(service: JobService, group: FakeGroup) -> None:
    group.start_called.clear()

    group.crash("rank 1 (pid 4242) killed by SIGKILL")
    await deadline(group.start_called.wait())
    job = submit(service)
    await group.next_run()

    assert group.starts == 2
    assert service.counters["restarts"] == 1
    assert job.state is JobState.RUNNING


async def test_jobs_queued_during_a_restart_run_after_it_in_order(service: JobService, group: FakeGroup) -> None:
    group.start_gate = asyncio.Event()
    group.start_called.clear()
    group.crash()
    await deadline(group.start_called.wait())

    jobs = [submit(service, prompt) for prompt in "ab"]
    assert not group.ready
    assert all(job.state is JobState.QUEUED for job in jobs)
    group.start_gate.set()

    for job in jobs:
        run = await group.next_run()
        assert run.job_id == job.id
        run.succeed()
        await finished(job)


async def test_fault_while_running_fails_that_job_and_the_next_runs_after_the_restart(
    service: JobService, group: FakeGroup
) -> None:
    victim, survivor = submit(service, "a"), submit(service, "b")
    await group.next_run()

    group.crash("rank 1 (pid 4242) killed by SIGKILL")

    assert (await finished(victim)).error == "rank 1 (pid 4242) killed by SIGKILL"
    assert victim.state is JobState.FAILED
    assert (await group.next_run()).job_id == survivor.id
    assert group.starts == 2


async def test_failed_restart_is_retried(service: JobService, group: FakeGroup) -> None:
    group.fail_starts = ["setup failed on rank 0: out of memory"]

    group.crash()
    job = submit(service)
    await group.next_run()

    assert group.starts == 3
    assert service.counters["restarts"] == 1
    assert job.state is JobState.RUNNING


# ---- TTL --------------------------------------------------------------------------------------


async def test_expire_forgets_ended_jobs_after_the_ttl_and_deletes_their_files(
    service: JobService, group: FakeGroup, store: OutputStore
) -> None:
    service.settings.result_ttl = 10.0
    job = submit(service)
    (await group.next_run()).succeed(b"data", "png")
    await finished(job)
    assert job.finished_at is not None
    assert job.output_file is not None

    service.expire(job.finished_at + 9.0)
    store.flush()
    assert service.get(job.id) is job
    assert job.output_file.exists()

    service.expire(job.finished_at + 10.5)
    store.flush()
    assert service.get(job.id) is None
    assert not job.output_file.exists()


async def test_expire_keeps_the_clients_own_output_file(
    service: JobService, group: FakeGroup, store: OutputStore
) -> None:
    service.settings.result_ttl = 10.0
    job = submit(service, output_path="keep.png")
    (await group.next_run()).succeed(b"data", "png")
    await finished(job)
    assert job.finished_at is not None

    service.expire(job.finished_at + 11)

    assert service.get(job.id) is None
    assert (store.root / "keep.png").read_bytes() == b"data"


async def test_expire_never_touches_queued_or_running_jobs(service: JobService, group: FakeGroup) -> None:
    service.settings.result_ttl = 0.0
    running, queued = submit(service, "a"), submit(service, "b")
    await group.next_run()

    service.expire(running.created_at + 1e9)

    assert service.get(running.id) is running
    assert service.get(queued.id) is queued


# ---- drain ------------------------------------------------------------------------------------


async def test_drain_cancels_queued_jobs_and_waits_for_the_running_one(service: JobService, group: FakeGroup) -> None:
    running, queued = submit(service, "a"), submit(service, "b")
    run = await group.next_run()

    drain = asyncio.create_task(service.drain())
    await finished(queued)

    assert queued.state is JobState.CANCELLED
    assert queued.error == "server shutting down"
    assert not drain.done()
    assert group.stops == 0
    with pytest.raises(NotReadyError):
        submit(service, "c")
    run.succeed()
    await deadline(drain)
    assert running.state is JobState.SUCCEEDED
    assert group.stops == 1


async def test_drain_cancels_the_running_job_after_the_drain_timeout(service: JobService, group: FakeGroup) -> None:
    service.settings.drain_timeout = 0
    job = submit(service)
    await group.next_run()

    await service.drain()

    assert group.cancelled == [job.id]
    assert job.state is JobState.CANCELLED
    assert group.stops == 1


# ---- small things -----------------------------------------------------------------------------


async def test_retry_after_is_about_one_job_run_time(service: JobService) -> None:
    assert service.retry_after() == 1
    service.run_seconds_ewma = 2.2
    assert service.retry_after() == 3


async def test_wait_returns_whether_the_job_ended(service: JobService, group: FakeGroup) -> None:
    job = submit(service)
    run = await group.next_run()
    assert not await service.wait(job, 0)

    waiter = asyncio.create_task(service.wait(job, 60))
    run.succeed()

    assert await deadline(waiter)


# ---- integrity ------------------------------------------------------------------------------


async def test_only_max_records_ended_jobs_are_kept(service: JobService, group: FakeGroup) -> None:
    service.settings.max_records = 2
    jobs = [submit(service, prompt) for prompt in "abc"]
    for job in jobs:
        (await group.next_run()).succeed()
        await finished(job)

    assert [service.get(job.id) for job in jobs] == [None, jobs[1], jobs[2]]


async def test_a_file_type_that_could_name_a_path_fails_the_job(service: JobService, group: FakeGroup) -> None:
    job = submit(service)
    (await group.next_run()).finish(JobOutcome("succeeded", output=b"x", file_type="png/../../x"))

    assert (await finished(job)).state is JobState.FAILED
    assert job.error is not None
    assert "file type" in job.error


async def test_a_copy_that_cannot_be_written_is_lost_and_never_served(
    service: JobService, group: FakeGroup, store: OutputStore
) -> None:
    store.jobs_dir.rmdir()
    store.jobs_dir.write_text("a file where the server's directory was")
    job = submit(service)
    async with service.subscribe(job) as events:
        (await group.next_run()).succeed(b"data", "png")
        await finished(job)
        while (await deadline(events.get()))[1].get("error") is None:  # the copy's write failed
            pass

    assert job.state is JobState.SUCCEEDED
    assert job.error is not None
    assert job.error.startswith("the output was lost")
    assert job.output_file is None
    assert service.held_output(job) is None
    assert store.writable() is not None  # readiness says so too


async def test_a_submit_the_journal_could_not_record_is_refused_and_cancelled(
    make_service: MakeService, group: FakeGroup, store: OutputStore
) -> None:
    service = await make_service()
    service.journal = FailingJournal()

    with pytest.raises(NotReadyError, match="could not record the job"):
        await service.accept({"prompt": "a"})

    (job,) = service.jobs.values()
    assert job.state is JobState.CANCELLED


class FailingJournal:
    """A journal whose transactions fail, as on a full disk."""

    def record(self, record: Any) -> None:
        pass

    async def committed(self) -> None:
        raise JournalError("could not record the job: database or disk is full")


async def test_a_submit_the_journal_fails_once_the_dispatcher_took_it_is_cancelled_and_never_run(
    make_service: MakeService, group: FakeGroup
) -> None:
    service = await make_service()
    service.journal = LateFailingJournal()

    with pytest.raises(NotReadyError, match="could not record the job"):
        await service.accept({"prompt": "a"})

    (job,) = service.jobs.values()
    await finished(job)
    assert job.state is JobState.CANCELLED
    assert job.error == "cancelled before it started"
    assert group.runs.empty()  # its group never had it


class LateFailingJournal(FailingJournal):
    """Fails at the event loop's next turn, as the real journal's transaction does: by then
    the dispatcher has taken the job out of the queue."""

    async def committed(self) -> None:
        await asyncio.sleep(0)
        await super().committed()


async def test_too_many_event_streams_are_refused(service: JobService) -> None:
    service.settings.max_event_streams_per_job = 1
    job = submit(service)

    async with service.subscribe(job):
        with pytest.raises(LimitError, match="for this job"):
            service.subscribe(job)
