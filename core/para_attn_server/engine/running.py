"""Running what the dispatcher took: one job, or a batch of jobs that share one pipeline
call, on one group; and each job's end from what the group reported.

A mixin of ``JobService`` (its attributes are the service's): the queue and the records
are the service's; this is only the part of its work that starts when jobs leave the queue.
A job whose group lost a rank or its host mid-run (``JobOutcome.lost``), as opposed to one
that failed by itself, runs again at the head of the queue, up to ``--max-attempts`` runs.
Each job of a batch keeps its own progress, previews, outcome and output. A job of a running
batch that is cancelled ends at once, its output dropped when the batch ends; the batch
itself is stopped only when no job of it is left to finish (``cancel_running``).
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Awaitable
from typing import TYPE_CHECKING, Any

import msgspec

from para_attn_server.engine.registry import FILE_TYPE, Job
from para_attn_server.errors import InputError
from para_attn_server.records import Attempt, JobState, public_error
from para_attn_server.storage.inputs import InputGoneError
from para_attn_server.workers.outcome import BatchMember, JobOutcome, ProgressCallback

if TYPE_CHECKING:
    from para_attn_server.engine.contract import Group
    from para_attn_server.engine.dispatcher import Dispatcher
    from para_attn_server.engine.inputs import InputResolver
    from para_attn_server.engine.models import ServedModels
    from para_attn_server.engine.observers import JobObservers
    from para_attn_server.engine.queue import JobQueue
    from para_attn_server.engine.registry import JobRegistry
    from para_attn_server.engine.saver import OutputSaver
    from para_attn_server.settings import JobSettings

log = logging.getLogger("para_attn_server.jobs")
CANCELLED = (JobState.CANCELLED, "cancelled before it started")


class JobRunning:
    dispatcher: Dispatcher[Job]
    queue: JobQueue[Job]
    counters: dict[str, int]
    media: InputResolver
    models: ServedModels
    settings: JobSettings
    registry: JobRegistry
    saver: OutputSaver
    observers: JobObservers
    batch_sizes: dict[int, int]  # batches started, by size
    runs_by_host: dict[str, int]  # job runs (attempts) started on each host's groups

    def _finish(self, job: Job, state: JobState, error: str | None = None, *, journal: bool = True) -> None:
        raise NotImplementedError

    def _changed(self, job: Job, *, journal: bool = True, notify: bool = True) -> None:
        raise NotImplementedError

    def _execute(self, jobs: list[Job], group: Group) -> Awaitable[None]:
        """The dispatcher took the jobs from the queue: they are running from now on (a
        cancel meanwhile must not look for them in the queue), and what it returns runs them."""
        now = time.time()
        host = group.host
        self.runs_by_host[host] = self.runs_by_host.get(host, 0) + len(jobs)
        for job in jobs:
            job.record = job.record.evolve(
                state=JobState.RUNNING, started_at=now, group=group.index, host=host, batch_size=len(jobs)
            )
            # Journaled (in the next group commit): after a crash a job that was running counts a
            # run cut short, one that was queued does not (``JobRegistry.recover``).
            self._changed(job)
        self.batch_sizes[len(jobs)] = self.batch_sizes.get(len(jobs), 0) + 1
        return self._run(jobs, group)

    async def _run(self, jobs: list[Job], group: Group) -> None:
        try:
            live: list[tuple[Job, dict[str, Any]]] = []
            media: dict[str, bytes] = {}  # every job's pictures, by checksum
            for job in jobs:
                if job.cancel_requested:  # cancelled before its group had it: it never runs
                    self._finish(job, *CANCELLED)
                    continue
                try:
                    media.update(await self.media.read(job.record) or {})
                    inputs = self.models.of(job.record.inputs).schema.rank_inputs(job.record.inputs)
                except (InputGoneError, InputError) as exc:  # its pictures, or an adapter, gone since
                    self._finish(job, JobState.FAILED, str(exc))
                    continue
                live.append((job, inputs))
            live = [(job, inputs) for job, inputs in live if not job.terminal]  # cancelled while read
            if not live:
                return
            if not group.ready:  # it faulted while their pictures were read: they run elsewhere
                for job, _ in live:
                    self._lost(job, group.last_fault or "its worker group failed")
                return
            (leader, inputs), rest = live[0], live[1:]
            members = [BatchMember(job.id, sent, self._progress(job), self._preview(job)) for job, sent in rest]
            outcome = await group.run(
                leader.id, inputs, self.settings.job_timeout, self._progress(leader), self._preview(leader), media,
                batch=members,
            )  # fmt: skip
            await self._complete(leader, outcome)
            for job, _ in rest:
                alike = JobOutcome(outcome.status, outcome.error, lost=outcome.lost)
                await self._complete(job, outcome.members.get(job.id, alike))
        except Exception as exc:  # a bug here must not kill the dispatcher
            log.exception("jobs %s: internal error", ", ".join(job.id for job in jobs))
            for job in jobs:
                if not job.terminal:
                    self._finish(job, JobState.FAILED, f"internal server error: {type(exc).__name__}")

    def _progress(self, job: Job) -> ProgressCallback:
        def on_progress(step: int, total: int | None) -> None:
            if job.terminal:  # cancelled out of its running batch
                return
            job.record = job.record.evolve(step=step, total=total)
            job.publish("progress", {"step": step, "total": total})
            self.observers.notify("progress", job.record)

        return on_progress

    def _preview(self, job: Job) -> Any:
        return functools.partial(self.registry.preview, job)

    async def _complete(self, job: Job, outcome: JobOutcome) -> None:
        if job.terminal:  # cancelled out of its batch: its output is dropped
            return
        if job.preempted is not None and outcome.status != "succeeded" and not job.cancel_requested:
            self._lost(job, job.preempted, planned=True)
        elif outcome.status == "failed" and outcome.lost and not job.cancel_requested:
            self._lost(job, public_error(outcome.error) or "its worker group failed")
        elif outcome.status == "cancelled":
            self._finish(job, JobState.CANCELLED, public_error(outcome.error) or "cancelled")
        elif outcome.status != "succeeded":
            if outcome.error and public_error(outcome.error) != outcome.error:
                log.info("job %s failed: %s", job.id, outcome.error)  # the operator keeps the paths
            self._finish(job, JobState.FAILED, public_error(outcome.error) or "failed")
        elif outcome.output is None:
            self._finish(job, JobState.FAILED, "the predictor returned no output")
        elif not FILE_TYPE.fullmatch(outcome.file_type or "bin"):
            self._finish(job, JobState.FAILED, "the predictor returned a file type that is not [A-Za-z0-9]+")
        else:
            saved = await self.saver.save(job, outcome.output, outcome.file_type or "bin", outcome.base64)
            error, durable, behind = saved
            job.settling = not durable
            self._finish(job, JobState.FAILED if error else JobState.SUCCEEDED, error, journal=durable)
            if behind is not None:  # the writer is behind past the memory budget: the group waits
                await behind

    def _lost(self, job: Job, fault: str, *, planned: bool = False) -> None:
        """Its group lost a rank or host mid-run: the job goes back to the head of the queue
        for its next attempt, or fails with every attempt's reason after ``max_attempts``
        (a ``planned`` stop, a drain's, is not counted)."""
        record = job.record
        started = record.started_at or time.time()
        attempt = Attempt(record.group or 0, record.host, started, time.time(), fault, planned=planned)
        attempts = (*record.attempts, attempt)
        job.preempted = None
        if sum(not a.planned for a in attempts) >= self.settings.max_attempts:
            job.record = record.evolve(attempts=attempts)
            reasons = "; ".join(f"attempt {n} (group {a.group}): {a.fault}" for n, a in enumerate(attempts, 1))
            self._finish(job, JobState.FAILED, reasons if len(attempts) > 1 else fault)
            return
        job.record = record.evolve(
            state=JobState.QUEUED, attempts=attempts, started_at=None, group=None, host=None, step=None, total=None,
            batch_size=None,
        )  # fmt: skip
        self.queue.requeue(job)
        self.counters["requeued"] += 1
        log.warning("job %s: its run was cut short (%s); queued again for attempt %d", job.id, fault, len(attempts) + 1)
        job.publish("requeued", msgspec.to_builtins(attempt))
        self.observers.notify("requeued", job.record)
        self._changed(job)
        self.dispatcher.wake()

    # ---- cancelling -------------------------------------------------------------------

    def preempt(self, group: Group, reason: str) -> None:
        """Stop what ``group`` runs so that it runs again elsewhere (a planned drain): not
        the jobs' fault, so their stopped runs do not count toward ``max_attempts``."""
        batch = self.dispatcher.running().get(group.index, [])
        for job in batch:
            job.preempted = reason
        for job in batch:  # the group knows the batch by the job it sent first
            if group.cancel(job.id):
                return

    def group_of(self, job: Job) -> tuple[Group, list[Job]] | None:
        """The group running ``job`` and the jobs it runs with it (a batch), or None."""
        for index, batch in self.dispatcher.running().items():
            if job in batch:
                return self.dispatcher.group(index), batch
        return None

    def cancel_running(self, job: Job) -> None:
        """A running job is cancelled: alone, its group stops it at the next step; in a batch
        with jobs still to finish, it ends cancelled now and the others go on."""
        found = self.group_of(job)
        if found is None:
            return
        group, batch = found
        others = [other for other in batch if other is not job and not other.terminal and not other.cancel_requested]
        if others:
            self._finish(job, JobState.CANCELLED, "cancelled")
            return
        for member in batch:  # the group knows the batch by the job it sent first
            if group.cancel(member.id):
                return
