"""The job service: job records, the bounded queue (priority, then arrival), states, outputs and events.

It knows nothing about processes: the dispatcher hands each queued job to an idle, ready
worker group, the supervisor restarts a group that faulted, and this service turns what a
group reports into job records. Job ids are uuid4 strings; an error message never names
another job's id.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
import uuid
from collections.abc import Callable, Hashable, Sequence
from typing import TYPE_CHECKING, Any, cast

import msgspec

from para_attn_server.allocator import IdleCollector
from para_attn_server.engine.dispatcher import Batching, Dispatcher
from para_attn_server.engine.inputs import Fetch, InputResolver
from para_attn_server.engine.membership import GroupMembership
from para_attn_server.engine.models import ServedModel, ServedModels
from para_attn_server.engine.observers import EventStreams, JobObserver, JobObservers
from para_attn_server.engine.queue import JobQueue
from para_attn_server.engine.registry import NOT_ASKED, Job, JobEvent, JobRegistry, adapters_of
from para_attn_server.engine.running import JobRunning
from para_attn_server.engine.saver import OutputSaver
from para_attn_server.engine.status import metrics_snapshot, quiet, server_status
from para_attn_server.errors import IdConflictError, InputError, JournalError, NotReadyError, QueueFullError
from para_attn_server.records import TERMINAL, JobRecord, JobState
from para_attn_server.schema import MAX_QUEUE_SECONDS, MODEL, OUTPUT_PATH, PRIORITY
from para_attn_server.settings import JobSettings
from para_attn_server.storage.outputs import Held, OutputCache
from para_attn_server.storage.temporaries import sweep_temporaries
from para_attn_server.views import HostStatus, JobView, MetricsSnapshot, ServerStatus, job_view

if TYPE_CHECKING:
    from para_attn_server.engine.contract import Group
    from para_attn_server.media import MediaInfo
    from para_attn_server.plugin.manager import Plugins
    from para_attn_server.predictor import Predictor
    from para_attn_server.schema import InputSchema
    from para_attn_server.storage.journal import JobJournal
    from para_attn_server.storage.outputs import OutputStore

log = logging.getLogger("para_attn_server.jobs")


class JobService(GroupMembership, JobRunning):
    def __init__(
        self,
        groups: Sequence[Group],
        store: OutputStore,
        plugins: Plugins,
        predictor: Predictor,
        schema: InputSchema,
        settings: JobSettings,
        journal: JobJournal | None = None,
        fetch: Fetch | None = None,
        more_models: Sequence[ServedModel] = (),
    ) -> None:
        """``predictor`` and ``schema``: the first (default) model's; ``more_models``: the
        others a server with several serves (their groups are among ``groups``)."""
        self.journal = journal
        self.store = store
        self.plugins = plugins
        first = ServedModel(schema.name or "", predictor, schema)
        self.models = ServedModels((model.name, model) for model in [first, *more_models])
        self.settings = settings
        self.outputs = OutputCache(settings.output_memory_bytes)
        self.registry = JobRegistry(store, self.outputs, settings, journal)
        self.saver = OutputSaver(store, self.outputs, predictor.replies_with_output_path, self._settled)
        self.jobs = self.registry.jobs
        self.previews = self.registry.previews  # each job's latest (step, jpeg)
        self.media = InputResolver(schema.media_fields, settings, fetch, self.registry, self.outputs, store)
        self.queue: JobQueue[Job] = JobQueue(lambda job: job.record.inputs.get(PRIORITY) or 0)
        self.accepting = False  # True once the first setup succeeded, until draining
        self.started = False
        self.counters: dict[str, int] = {"submitted": 0, "rejected_queue_full": 0, "restarts": 0, "requeued": 0}
        self.finished_by_state: dict[str, int] = {s.value: 0 for s in TERMINAL}
        self.run_seconds_ewma: float | None = None
        batching = Batching(settings.max_batch, settings.batch_wait_ms / 1000, self._batch_key, _arrived)
        self.dispatcher: Dispatcher[Job] = Dispatcher(
            groups, self.queue, self._execute, adapters_of, batching, self.model_of
        )
        self.batch_sizes: dict[int, int] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._supervisors: dict[int, asyncio.Task[None]] = {}
        # By name; the fleet keeps the joined ones. Their last_seen_s holds time.monotonic()
        # of the host's last poll (the status shows the seconds since).
        self.hosts: dict[str, HostStatus] = {}
        self.runs_by_host: dict[str, int] = {}  # job runs started on each host's groups
        self.streams = EventStreams(settings)
        self._cancel_asked: set[str] = set()  # ids cancelled while their submit was being received
        self._encoder = msgspec.msgpack.Encoder(order="deterministic")
        self.observers = JobObservers(plugins)
        self.collector = IdleCollector(lambda: quiet(self))  # run by the server, once settled

    @property
    def predictor(self) -> Predictor:
        """The first model's predictor (the plugins' face shows it)."""
        return self.models.first.predictor

    @property
    def schema(self) -> InputSchema:
        """The first model's request schema (the original endpoints decode with it)."""
        return self.models.first.schema

    @schema.setter
    def schema(self, schema: InputSchema) -> None:
        self.models.first.schema = schema

    def add_listener(self, listener: JobObserver) -> Callable[[], None]:
        """Call ``listener(kind, record)`` at every job event (``observers.JobObserver``);
        returns what removes it."""
        return self.observers.add(listener)

    # ---- lifecycle --------------------------------------------------------------------

    def recover(self) -> int:
        """Load an earlier run's records, queue again what it left unfinished; how many loaded."""
        count, requeued = self.registry.recover(time.time())
        for job in requeued:
            try:  # the model served now may not be the one the job was accepted for
                self.models.of(job.record.inputs).schema.check_stored(job.record.inputs)
            except (msgspec.ValidationError, InputError) as exc:
                self._finish(job, JobState.FAILED, f"after a restart its inputs no longer fit this model ({exc})")
                job.ended_at_start = True
            else:
                self.queue.append(job)
        self.registry.inputs.sweep(set(self.jobs))
        sweep_temporaries(self.store.root)
        return count

    async def drain(self) -> None:
        """Stop taking jobs, let the running ones finish (cancel them after
        ``drain_timeout``), cancel the queued ones and stop the ranks."""
        self.accepting = False
        while self.queue:
            self._finish(self.queue.popleft(), JobState.CANCELLED, "server shutting down")
        running = self.dispatcher.running_jobs()
        if running:
            waits = [job.done.wait() for job in running]
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.gather(*waits), self.settings.drain_timeout)
            await asyncio.gather(*(self.cancel_and_wait(job.id) for job in running if not job.terminal))
        for task in [*self._tasks, *self._supervisors.values()]:
            task.cancel()
        await asyncio.gather(*(group.stop() for group in self.groups))

    # ---- client operations ------------------------------------------------------------

    def submit(
        self, inputs: dict[str, Any], job_id: str | None = None, media: tuple[MediaInfo, ...] = ()
    ) -> tuple[Job, bool]:
        """Queue a job; returns (job, created). An existing id with the same inputs returns
        that job (idempotent submit); with other inputs it is an IdConflictError. ``media``:
        what its input pictures are (``accept`` stores their bytes first)."""
        fingerprint = self._encoder.encode(inputs)
        if job_id is not None:
            existing = self.jobs.get(job_id)
            if existing is not None:
                if existing.record.fingerprint != fingerprint:
                    raise IdConflictError("a job with this id exists with different inputs")
                return existing, False
        if not self.accepting:
            raise NotReadyError("the server is not accepting jobs (starting up or shutting down)")
        served = self.models.of(inputs)
        self.plugins.validate(served.predictor, inputs)
        output_file = None
        if inputs.get(OUTPUT_PATH) is not None:
            output_file = str(self.store.confine(inputs[OUTPUT_PATH]))
        if len(self.queue) >= self.settings.max_queue:
            self.counters["rejected_queue_full"] += 1
            raise QueueFullError(f"the queue is full ({self.settings.max_queue} jobs waiting)", self.retry_after())
        record = JobRecord(
            id=job_id or str(uuid.uuid4()),
            inputs=inputs,
            fingerprint=fingerprint,
            created_at=time.time(),
            output_path=inputs.get(OUTPUT_PATH),
            output_file=output_file,
            media=media,
        )
        job = self.registry.add(record)
        self.queue.append(job)
        if self.started:
            self._deadline(job)
        self.counters["submitted"] += 1
        served.submitted += 1
        self._changed(job)
        self.dispatcher.wake()
        return job, True

    async def accept(self, inputs: dict[str, Any], job_id: str | None = None) -> tuple[Job, bool]:
        """``submit``, answered once the job's record is committed to the journal, so a
        job a client was told about survives a crash right after the answer."""
        media: tuple[MediaInfo, ...] = ()
        try:
            if self.media.wants(inputs):  # pictures: checked and on disk before the job exists
                inputs, job_id, media = await self.media.admit(inputs, job_id)
            try:
                job, created = self.submit(inputs, job_id, media)
            except BaseException:
                await self.media.discard(job_id, media)  # a job that was not queued keeps no inputs
                raise
            if created and job.id in self._cancel_asked:  # while its pictures arrived
                self.cancel(job.id)
        finally:
            self._cancel_asked.discard(job_id)
        if self.journal is not None:
            try:
                await self.journal.committed()
            except JournalError as exc:
                if created:  # not on record, so not acknowledged: it must not run unknown either
                    self.cancel(job.id)
                raise NotReadyError(str(exc)) from None
        return job, created

    def get(self, job_id: str) -> Job | None:
        return self.jobs.get(job_id)

    def list_jobs(
        self, state: JobState | None = None, limit: int = 20, after: str | None = None
    ) -> tuple[list[Job], bool]:
        """A page of jobs newest first and whether more follow (see ``JobRegistry.list``)."""
        return self.registry.list(state, limit, after)

    def cancel(self, job_id: str) -> Job | None:
        """Cancel a queued job at once, or ask the ranks to stop a running one."""
        job = self.jobs.get(job_id)
        if job is None and job_id in self.media.admitting:
            self._cancel_asked.add(job_id)  # the job is cancelled as soon as it exists
        if job is None or job.terminal:
            return None
        job.cancel_requested = True
        if job.state is JobState.QUEUED:
            self.queue.remove(job)
            self._finish(job, JobState.CANCELLED, "cancelled before it started")
        else:  # on record: a restart before it stops must not run it again
            job.record = job.record.evolve(cancel_requested=True)
            self._changed(job, notify=False)
            self.cancel_running(job)
        return job

    async def cancel_and_wait(self, job_id: str) -> Job | None:
        """Cancel, then give a running job its group's cancel grace to stop (past that the
        group restarts to stop it). None when there was nothing to cancel."""
        found = self.group_of(self.jobs[job_id]) if job_id in self.jobs else None
        job = self.cancel(job_id)
        if job is not None and found is not None:
            await self.wait(job, found[0].settings.cancel_grace + 1)
        return job

    def oldest_running(self) -> Job | None:
        """The running job that started first: what the original's ``/cancel`` stops."""
        running = self.dispatcher.running_jobs()
        return min(running, key=lambda job: job.record.started_at or 0.0, default=None)

    async def wait(self, job: Job, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for the job to end; True if it did."""
        if not job.terminal and timeout > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(job.done.wait(), timeout)
        return job.terminal

    def subscribe(self, job: Job) -> contextlib.AbstractAsyncContextManager[asyncio.Queue[JobEvent]]:
        """A queue of the job's events while the context lasts; LimitError when too many
        streams are open (in all, or for this job)."""
        return self.streams.open(job, self.retry_after())

    def view(self, job: Job) -> JobView:
        position = None
        if job.state is JobState.QUEUED:
            with contextlib.suppress(ValueError):
                position = self.queue.index(job)
        return job_view(job.record, position, self.model_of(job) if len(self.models) > 1 else None)

    def held_output(self, job: Job) -> Held | None:
        """The job's output if it is still held in memory (bytes, or base64 text)."""
        return self.outputs.get(job.id)

    def retry_after(self) -> int:
        """Seconds a refused client should wait: a queue slot frees when a running job
        ends, so about one job's run time."""
        return max(1, math.ceil(self.run_seconds_ewma or 1.0))

    # ---- status -----------------------------------------------------------------------

    @property
    def ready(self) -> bool:
        return any(group.ready for group in self.groups)

    def not_ready_reason(self) -> str | None:
        """Why the server cannot take and keep jobs now, or None: no group is ready, its
        output directory refuses new files (deleted, read-only, full), or its journal's file
        is gone."""
        if not self.ready:
            return "no worker group is ready"
        unwritable = self.store.writable()
        if unwritable is not None:
            return f"the output directory cannot be written: {unwritable}"
        return None if self.journal is None else self.journal.gone()

    def status(self) -> ServerStatus:
        return server_status(self)

    def metrics(self) -> MetricsSnapshot:
        return metrics_snapshot(self)

    # ---- running a job ----------------------------------------------------------------

    def _finish(self, job: Job, state: JobState, error: str | None = None, *, journal: bool = True) -> None:
        now = time.time()
        job.record = job.record.evolve(state=state, error=error, finished_at=now)
        started = job.record.started_at
        if started is not None and state is JobState.SUCCEEDED:
            took = now - started
            self.run_seconds_ewma = took if self.run_seconds_ewma is None else 0.8 * self.run_seconds_ewma + 0.2 * took
        self.finished_by_state[state.value] += 1
        served = self.models.get(self.model_of(job))
        if served is not None:
            served.finished[state.value] = served.finished.get(state.value, 0) + 1
        self.registry.ended(job)
        self._changed(job, journal=journal)
        job.done.set()

    def _settled(self, job: Job) -> None:
        """A job's written-behind output is on disk (or lost): now its success is journaled.
        Its state did not change, so ``job_state_changed`` does not run again."""
        job.settling = False
        if self.jobs.get(job.id) is job:
            self._changed(job, notify=False)

    def promise(self, job_id: str, what: str, owed: bool = True) -> None:
        """Journal that a plugin owes the job's client ``what`` (``owed`` False: no longer)."""
        job = self.jobs.get(job_id)
        if job is None or (what in job.record.promises) is owed:
            return
        kept = tuple(p for p in job.record.promises if p != what)
        job.record = job.record.evolve(promises=(*kept, what) if owed else kept)
        if self.journal is not None and not job.settling:  # else it goes with the settled record
            self.journal.record(job.record)

    def _changed(self, job: Job, *, journal: bool = True, notify: bool = True) -> None:
        if self.journal is not None and journal:
            self.journal.record(job.record)
        if job.subscribers:  # a view costs something to build: only for who listens
            job.publish("state", msgspec.to_builtins(self.view(job)))
        if notify:
            self.observers.notify("state", job.record)

    # ---- scheduling -------------------------------------------------------------------

    def model_of(self, job: Job) -> str:
        """The name of the served model the job chose."""
        return job.record.inputs.get(MODEL) or self.models.first.name

    def _batch_key(self, job: Job) -> Hashable:
        """Jobs with equal keys (not None) may share a pipeline call (``Predictor.batch_key``);
        the dispatcher batches only jobs of one model."""
        if job.batch_key is NOT_ASKED:
            try:
                job.batch_key = self.plugins.batch_key(self.models.of(job.record.inputs).predictor, job.record.inputs)
            except Exception:  # a predictor's bug: the job runs alone
                log.exception("job %s: batch_key failed; it runs alone", job.id)
                job.batch_key = None
        return cast(Hashable, job.batch_key)

    def _deadline(self, job: Job) -> None:
        """A job not started within its max_queue_seconds ends expired, never run."""
        seconds = job.record.inputs.get(MAX_QUEUE_SECONDS) or self.settings.max_queue_seconds
        if seconds:
            delay = max(0.0, job.record.created_at + seconds - time.time())
            asyncio.get_running_loop().call_later(delay, self._expire_queued, job, seconds)

    def _expire_queued(self, job: Job, seconds: float) -> None:
        if job.state is JobState.QUEUED and self.jobs.get(job.id) is job and not job.record.attempts:
            self.queue.remove(job)
            self._finish(job, JobState.EXPIRED, f"not started within {seconds:g} s (max_queue_seconds)")

    # ---- expiry -----------------------------------------------------------------------

    async def _expire_loop(self) -> None:
        while True:
            await asyncio.sleep(max(1.0, min(self.settings.result_ttl / 4, 60.0)))
            self.expire(time.time())

    def expire(self, now: float) -> None:
        self.registry.expire(now)


def _arrived(job: Job) -> float:
    return job.record.created_at
