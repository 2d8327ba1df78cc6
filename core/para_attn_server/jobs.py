"""The job service: job records, the bounded FIFO queue, states, outputs and events.

It knows nothing about processes: it hands one job at a time to the worker group and
restarts the group (with back-off) whenever the group reports a fault, so jobs still in the
queue run after the restart. Job ids are uuid4 strings; an error message never names
another job's id.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import enum
import logging
import math
import re
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec

from .errors import InputError, NotReadyError, QueueFullError, SetupError
from .joborder import CreationOrder
from .schema import OUTPUT_PATH

if TYPE_CHECKING:
    from .group import JobOutcome, WorkerGroup
    from .journal import JobJournal
    from .outputs import OutputStore
    from .plugins import Plugins
    from .schema import InputSchema

log = logging.getLogger("para_attn_server.jobs")

# What a rank's error may say about the machines: gloo/c10d prefix messages with their
# source location ("[/__w/pytorch/.../pair.cc:537] Read error ..."), and OS errors name
# files ("No such file or directory: '/srv/models/x'"). Clients get the message without them.
_SOURCE_LOCATION = re.compile(r"\[[^\]\s]*\.(?:c|cc|cpp|cu|h|hpp|py):\d+\]\s*")
_ABSOLUTE_PATH = re.compile(r"(?<![\w.:/~-])/(?:[\w.@+~-]+/)+[\w.@+~-]*")


def public_error(error: str | None) -> str | None:
    """A job's error as clients see it: without source locations and absolute paths."""
    if not error:
        return error
    return _ABSOLUTE_PATH.sub("<path>", _SOURCE_LOCATION.sub("", error))


class JobState(enum.StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


TERMINAL = frozenset({JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED})


@dataclass
class ServiceSettings:
    max_queue: int = 64
    job_timeout: float | None = None
    result_ttl: float = 3600.0
    drain_timeout: float = 30.0
    restart_backoff: float = 1.0  # first wait after a failed restart; doubles up to the max
    restart_backoff_max: float = 30.0
    output_memory_bytes: int = 512 * 1024 * 1024  # recent outputs served from memory, in all


@dataclass(eq=False)
class Job:
    id: str
    inputs: dict[str, Any]
    fingerprint: bytes
    state: JobState = JobState.QUEUED
    created_at: float = field(default_factory=time.time)
    started_at: float | None = None
    finished_at: float | None = None
    step: int | None = None
    total: int | None = None
    error: str | None = None
    file_type: str | None = None
    output_file: Path | None = None
    output_path: str | None = None  # the client's relative output_path, when given
    output_bytes: bytes | None = None  # a recent output, served without reading its file
    written_by_predictor: bool = False
    cancel_requested: bool = False
    subscribers: list[asyncio.Queue[tuple[str, dict[str, Any]]]] = field(default_factory=list)
    done: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def terminal(self) -> bool:
        return self.state in TERMINAL

    def publish(self, event: str, data: dict[str, Any]) -> None:
        for queue in self.subscribers:
            queue.put_nowait((event, data))


class JobView(msgspec.Struct, omit_defaults=True):
    """A job as the /v1 API shows it."""

    id: str
    state: str
    created_at: float
    started_at: float | None = None
    finished_at: float | None = None
    step: int | None = None
    total_steps: int | None = None
    queue_position: int | None = None
    error: str | None = None
    file_type: str | None = None
    output_path: str | None = None
    output_url: str | None = None


class JobService:
    def __init__(
        self,
        group: WorkerGroup,
        store: OutputStore,
        plugins: Plugins,
        predictor: object,
        schema: InputSchema,
        settings: ServiceSettings,
        journal: JobJournal | None = None,
    ) -> None:
        self.group = group
        self.journal = journal
        self.store = store
        self.plugins = plugins
        self.predictor = predictor
        self.schema = schema
        self.settings = settings
        self.jobs: dict[str, Job] = {}
        self.order = CreationOrder()  # the ids of ``jobs``, oldest first, for listing
        self.queue: deque[Job] = deque()
        self.running: Job | None = None
        self.accepting = False  # True once the first setup succeeded, until draining
        self.started = False
        self.counters: dict[str, int] = {"submitted": 0, "rejected_queue_full": 0, "restarts": 0}
        self.finished_by_state: dict[str, int] = {s.value: 0 for s in TERMINAL}
        self.run_seconds_ewma: float | None = None
        self._queued = asyncio.Event()
        self._in_memory: dict[str, tuple[Job, concurrent.futures.Future[None] | None]] = {}  # oldest first
        self._memory_bytes = 0
        self._tasks: list[asyncio.Task[None]] = []
        self._encoder = msgspec.msgpack.Encoder(order="deterministic")

    # ---- lifecycle --------------------------------------------------------------------

    def recover(self) -> int:
        """Load the jobs an earlier run of the server recorded; those it left queued or
        running failed with it. Returns how many jobs were loaded."""
        if self.journal is None:
            return 0
        from .journal import iter_rows

        for row in iter_rows(self.journal.load()):
            job = Job(row["id"], row["inputs"], row["fingerprint"], state=JobState(row["state"]))
            for name in (
                "created_at",
                "started_at",
                "finished_at",
                "step",
                "total",
                "error",
                "file_type",
                "output_path",
            ):
                setattr(job, name, row[name])
            job.output_file = Path(row["output_file"]) if row["output_file"] else None
            if job.state is JobState.SUCCEEDED and not (job.output_file and job.output_file.exists()):
                # Written behind and lost with the server: say so rather than 404 later.
                job.state, job.error = JobState.FAILED, "server restarted before the output was saved"
                self.journal.record(job)
            job.written_by_predictor = bool(row["written_by_predictor"])
            if not job.terminal:
                job.state, job.error, job.finished_at = JobState.FAILED, "server restarted", time.time()
                self.journal.record(job)
            job.done.set()
            self.jobs[job.id] = job
            self.order.add(job.id)  # the journal loads them oldest first
        loaded = len(self.jobs)
        # Records whose TTL ran out while the server was down go now, with their files.
        self.expire(time.time())
        return loaded

    async def start(self) -> None:
        """First start of the worker group; raises ``SetupError`` if it fails."""
        await self.group.start()
        self.started = True
        self.accepting = True
        self._tasks = [asyncio.create_task(self._dispatch()), asyncio.create_task(self._expire())]

    async def drain(self) -> None:
        """Stop taking jobs, let the running one finish (cancel it after
        ``drain_timeout``), cancel the queued ones and stop the ranks."""
        self.accepting = False
        while self.queue:
            self._finish(self.queue.popleft(), JobState.CANCELLED, "server shutting down")
        running = self.running
        if running is not None:
            try:
                await asyncio.wait_for(running.done.wait(), self.settings.drain_timeout)
            except TimeoutError:
                self.cancel(running.id)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(running.done.wait(), self.group.settings.cancel_grace + 5)
        for task in self._tasks:
            task.cancel()
        await self.group.stop()

    # ---- client operations ------------------------------------------------------------

    def submit(self, inputs: dict[str, Any], job_id: str | None = None) -> tuple[Job, bool]:
        """Queue a job; returns (job, created). An existing id with the same inputs returns
        that job (idempotent submit); with other inputs it is an InputError."""
        fingerprint = self._encoder.encode(inputs)
        if job_id is not None:
            existing = self.jobs.get(job_id)
            if existing is not None:
                if existing.fingerprint != fingerprint:
                    raise InputError("a job with this id exists with different inputs", "id")
                return existing, False
        if not self.accepting:
            raise NotReadyError("the server is not accepting jobs (starting up or shutting down)")
        self.plugins.validate(self.predictor, inputs)
        output_file = None
        if inputs.get(OUTPUT_PATH) is not None:
            output_file = self.store.confine(inputs[OUTPUT_PATH])
        if len(self.queue) >= self.settings.max_queue:
            self.counters["rejected_queue_full"] += 1
            raise QueueFullError(f"the queue is full ({self.settings.max_queue} jobs waiting)")
        job = Job(job_id or str(uuid.uuid4()), inputs, fingerprint)
        if output_file is not None:
            job.output_path = inputs[OUTPUT_PATH]
            job.output_file = output_file
        self.jobs[job.id] = job
        self.order.add(job.id)
        self.queue.append(job)
        self.counters["submitted"] += 1
        self._changed(job)
        self._queued.set()
        return job, True

    def get(self, job_id: str) -> Job | None:
        return self.jobs.get(job_id)

    def list_jobs(
        self, state: JobState | None = None, limit: int = 20, after: str | None = None
    ) -> tuple[list[Job], bool]:
        """Up to ``limit`` jobs newest first (only those in ``state``, when given), older
        than the job ``after`` names; and whether more follow."""
        try:
            ids = self.order.older_than(after)
        except KeyError:
            raise InputError("no such job (ids are forgotten --result-ttl seconds after it ended)", "after") from None
        page: list[Job] = []
        for job_id in ids:
            job = self.jobs[job_id]
            if state is None or job.state is state:
                if len(page) == limit:
                    return page, True
                page.append(job)
        return page, False

    def cancel(self, job_id: str) -> Job | None:
        """Cancel a queued job at once, or ask the ranks to stop a running one."""
        job = self.jobs.get(job_id)
        if job is None or job.terminal:
            return None
        job.cancel_requested = True
        if job.state is JobState.QUEUED:
            self.queue.remove(job)
            self._finish(job, JobState.CANCELLED, "cancelled before it started")
        else:
            self.group.cancel(job.id)
        return job

    async def wait(self, job: Job, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for the job to end; True if it did."""
        if not job.terminal and timeout > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(job.done.wait(), timeout)
        return job.terminal

    @contextlib.asynccontextmanager
    async def subscribe(self, job: Job) -> AsyncIterator[asyncio.Queue[tuple[str, dict[str, Any]]]]:
        queue: asyncio.Queue[tuple[str, dict[str, Any]]] = asyncio.Queue()
        job.subscribers.append(queue)
        try:
            yield queue
        finally:
            job.subscribers.remove(queue)

    def view(self, job: Job) -> JobView:
        position = None
        if job.state is JobState.QUEUED:
            with contextlib.suppress(ValueError):
                position = self.queue.index(job)
        return JobView(
            id=job.id,
            state=job.state.value,
            created_at=job.created_at,
            started_at=job.started_at,
            finished_at=job.finished_at,
            step=job.step,
            total_steps=job.total,
            queue_position=position,
            error=job.error,
            file_type=job.file_type,
            output_path=job.output_path,
            output_url=f"/v1/jobs/{job.id}/output" if job.state is JobState.SUCCEEDED else None,
        )

    def retry_after(self) -> int:
        """Seconds a refused client should wait: a queue slot frees when the running job
        ends, so about one job's run time."""
        return max(1, math.ceil(self.run_seconds_ewma or 1.0))

    # ---- dispatcher -------------------------------------------------------------------

    async def _dispatch(self) -> None:
        while True:
            if not self.group.ready:
                await self._restart()
                continue
            if not self.queue:
                self._queued.clear()
                waiter: asyncio.Future[Any] = asyncio.ensure_future(self._queued.wait())
                await asyncio.wait({waiter, self.group.fault}, return_when=asyncio.FIRST_COMPLETED)
                waiter.cancel()
                continue
            job = self.queue.popleft()
            await self._execute(job)

    async def _restart(self) -> None:
        delay = self.settings.restart_backoff
        while True:
            try:
                await self.group.start()
                self.counters["restarts"] += 1
                return
            except SetupError as exc:
                log.error("restart failed: %s; retrying in %.0f s", exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.settings.restart_backoff_max)

    async def _execute(self, job: Job) -> None:
        job.state = JobState.RUNNING
        job.started_at = time.time()
        self.running = job
        self._changed(job)
        inputs = job.inputs
        if job.output_file is not None and self.schema.predict_writes_output_path:
            # A predictor written for the original server writes the file itself: hand
            # it the confined absolute path, never the client's string.
            inputs = {**inputs, OUTPUT_PATH: str(job.output_file)}
            job.output_file.parent.mkdir(parents=True, exist_ok=True)  # inside the output dir: confined

        def on_progress(step: int, total: int | None) -> None:
            job.step, job.total = step, total
            job.publish("progress", {"step": step, "total": total})

        try:
            outcome = await self.group.run(job.id, inputs, self.settings.job_timeout, on_progress)
            await self._complete(job, outcome)
        except Exception as exc:  # a bug here must not kill the dispatcher
            log.exception("job %s: internal error", job.id)
            self._finish(job, JobState.FAILED, f"internal server error: {type(exc).__name__}")
        finally:
            self.running = None

    async def _complete(self, job: Job, outcome: JobOutcome) -> None:
        if outcome.status == "succeeded":
            if outcome.output is not None:
                job.file_type = outcome.file_type or "bin"
                target = job.output_file or self.store.job_file(job.id, job.file_type)
                try:
                    if job.output_path is None:
                        # The server's own copy is written behind, off the request path (a
                        # file create can stall behind the disk's journal); until then, and
                        # while memory allows, the output is served from memory.
                        written = self.store.write_behind(target, outcome.output)
                    else:
                        # The client named this file: it exists before the job says succeeded.
                        await asyncio.to_thread(self.store.write, target, outcome.output)
                        written = None
                    self._keep_in_memory(job, outcome.output, written)
                except InputError as exc:
                    self._finish(job, JobState.FAILED, f"could not write the output: {exc}")
                    return
                except OSError as exc:
                    # The OS names the server's absolute path: log it, tell the client less.
                    log.error("job %s: could not write %s: %s", job.id, target, exc)
                    where = f" to {job.output_path}" if job.output_path else ""
                    self._finish(
                        job, JobState.FAILED, f"could not write the output{where}: {exc.strerror or type(exc).__name__}"
                    )
                    return
                job.output_file = target
            elif outcome.written_path is not None and self.store.is_inside(outcome.written_path):
                job.output_file = Path(outcome.written_path)
                job.file_type = job.output_file.suffix.lstrip(".") or "bin"
                job.written_by_predictor = True
            else:
                self._finish(job, JobState.FAILED, "the predictor reported an output that does not exist")
                return
            self._finish(job, JobState.SUCCEEDED)
        elif outcome.status == "cancelled":
            self._finish(job, JobState.CANCELLED, public_error(outcome.error) or "cancelled")
        else:
            if outcome.error and public_error(outcome.error) != outcome.error:
                log.info("job %s failed: %s", job.id, outcome.error)  # the operator keeps the paths
            self._finish(job, JobState.FAILED, public_error(outcome.error) or "failed")

    def _finish(self, job: Job, state: JobState, error: str | None = None) -> None:
        job.state = state
        job.error = error
        job.finished_at = time.time()
        if job.started_at is not None and state is JobState.SUCCEEDED:
            took = job.finished_at - job.started_at
            self.run_seconds_ewma = took if self.run_seconds_ewma is None else 0.8 * self.run_seconds_ewma + 0.2 * took
        self.finished_by_state[state.value] += 1
        self._changed(job)
        job.done.set()

    def _changed(self, job: Job) -> None:
        if self.journal is not None:
            self.journal.record(job)
        job.publish("state", msgspec.to_builtins(self.view(job)))
        try:
            self.plugins.job_state_changed(job)
        except Exception:  # an observer's bug must not break the job
            log.exception("job_state_changed hook failed")

    async def _expire(self) -> None:
        while True:
            await asyncio.sleep(max(1.0, min(self.settings.result_ttl / 4, 60.0)))
            self.expire(time.time())

    def _keep_in_memory(self, job: Job, data: bytes, written: concurrent.futures.Future[None] | None) -> None:
        """Serve ``job``'s output from memory; forget the oldest outputs (once they are on
        disk) when they take more than ``output_memory_bytes`` in all."""
        job.output_bytes = data
        self._in_memory[job.id] = (job, written)
        self._memory_bytes += len(data)
        while self._memory_bytes > self.settings.output_memory_bytes and self._in_memory:
            oldest, pending = next(iter(self._in_memory.values()))
            if pending is not None and not pending.done():
                break  # its file is not written yet: keep serving it from memory
            self._forget_output(oldest)

    def _forget_output(self, job: Job) -> None:
        if self._in_memory.pop(job.id, None) is not None and job.output_bytes is not None:
            self._memory_bytes -= len(job.output_bytes)
            job.output_bytes = None

    def expire(self, now: float) -> None:
        """Forget the jobs that ended more than ``result_ttl`` seconds before ``now``, and
        delete the server's own copies of their outputs (never a client's output_path)."""
        cutoff = now - self.settings.result_ttl
        expired = [j for j in self.jobs.values() if j.terminal and (j.finished_at or 0) < cutoff]
        for job in expired:
            del self.jobs[job.id]
            self._forget_output(job)
            if self.journal is not None:
                self.journal.forget(job.id)
            if job.output_file is not None and job.output_file.parent == self.store.jobs_dir:
                self.store.delete_behind(job.output_file)  # queued after its own write-behind
        if expired:
            self.order.keep(self.jobs)
