"""The jobs the server remembers: by id, journaled, and forgotten in the order they ended.

A ``Job`` is one job while the server holds it: its current (immutable) record and what
waits on it. The registry loads the records an earlier run left, keeps the ended jobs in
the order they ended so expiry looks only at the oldest, and caps how many it keeps. It
holds each job's latest preview too, and drops it with the job.
"""

from __future__ import annotations

import asyncio
import builtins
import logging
import os
import re
import stat
from collections import deque
from pathlib import Path
from typing import TYPE_CHECKING, Any

from para_attn_server.adapters import names_in
from para_attn_server.engine.order import CreationOrder
from para_attn_server.engine.previews import PreviewStore
from para_attn_server.errors import InputError
from para_attn_server.records import TERMINAL, JobRecord, JobState
from para_attn_server.storage.inputs import InputStore

if TYPE_CHECKING:
    from para_attn_server.settings import JobSettings
    from para_attn_server.storage.journal import JobJournal
    from para_attn_server.storage.outputs import OutputCache, OutputStore

log = logging.getLogger("para_attn_server.jobs")
#: What a job's subscribers receive (``Job.publish``): the event's kind (``"state"``,
#: ``"progress"``, ``"preview"``) and its data; the SSE route sends each as one event.
JobEvent = tuple[str, dict[str, Any]]
FILE_TYPE = re.compile(r"[A-Za-z0-9]+")  # it becomes a file name's suffix and a header value
GONE = "the output is gone"
MAX_INTERRUPTIONS = 2  # runs of a job the server's end may cut short before it is given up


NOT_ASKED: Any = object()  # a job's batch key before the predictor was asked for it


def adapters_of(job: Job) -> list[str]:
    """The adapters (LoRA) the job applies, by name: what the dispatcher matches groups by."""
    return names_in(job.record.inputs)


class Job:
    """A job while the server holds it: its latest record, and what waits on it."""

    def __init__(self, record: JobRecord) -> None:
        self.record = record
        self.done = asyncio.Event()
        self.cancel_requested = False
        self.subscribers: list[asyncio.Queue[JobEvent]] = []
        self.batch_key: Any = NOT_ASKED  # the predictor's batch_key of its inputs, once asked
        self.preempted: str | None = None  # why its running group stops it to run it elsewhere (a drain)
        # Loaded from an earlier run's journal; and whether this start ended it (given up,
        # cancelled, its output gone), before any app's job listener could hear of it.
        self.restored = False
        self.ended_at_start = False
        # Succeeded, its output's copy still being written: its record is journaled once the
        # copy is on disk, never before (a restart would find a success with no file).
        self.settling = False

    @property
    def id(self) -> str:
        return self.record.id

    @property
    def state(self) -> JobState:
        return self.record.state

    @property
    def terminal(self) -> bool:
        return self.record.state in TERMINAL

    # Read-only shortcuts to the current record's fields.
    @property
    def inputs(self) -> dict[str, Any]:
        return self.record.inputs

    @property
    def error(self) -> str | None:
        return self.record.error

    @property
    def step(self) -> int | None:
        return self.record.step

    @property
    def total(self) -> int | None:
        return self.record.total

    @property
    def file_type(self) -> str | None:
        return self.record.file_type

    @property
    def created_at(self) -> float:
        return self.record.created_at

    @property
    def finished_at(self) -> float | None:
        return self.record.finished_at

    @property
    def output_file(self) -> Path | None:
        return None if self.record.output_file is None else Path(self.record.output_file)

    def publish(self, event: str, data: dict[str, Any]) -> None:
        for queue in self.subscribers:
            queue.put_nowait((event, data))


class JobRegistry:
    def __init__(
        self, store: OutputStore, outputs: OutputCache, settings: JobSettings, journal: JobJournal | None
    ) -> None:
        self.store = store
        self.outputs = outputs
        self.settings = settings
        self.journal = journal
        self.jobs: dict[str, Job] = {}
        self.order = CreationOrder()  # the ids of ``jobs``, for listing
        self.previews = PreviewStore(settings.preview_memory_bytes)
        self.inputs = InputStore(store)
        self._ended: deque[Job] = deque()  # terminal jobs in the order they ended

    def add(self, record: JobRecord) -> Job:
        job = Job(record)
        self.jobs[job.id] = job
        self.order.add(job.id)
        return job

    def list(self, state: JobState | None, limit: int, after: str | None) -> tuple[list[Job], bool]:
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

    def preview(self, job: Job, step: int, jpeg: bytes) -> None:
        """Keep ``jpeg`` as the job's latest preview and tell its subscribers where it is."""
        self.previews.put(job.id, step, jpeg)
        job.publish("preview", {"step": step, "url": f"/v1/jobs/{job.id}/preview"})

    def ended(self, job: Job) -> None:
        self._ended.append(job)
        while len(self._ended) > self.settings.max_records:
            self.forget(self._ended.popleft())

    def recover(self, now: float) -> tuple[int, builtins.list[Job]]:
        """Load the jobs an earlier run of the server recorded. Those it left queued or
        running are queued again (in the order they were created); but one whose run the
        server's end cut short ``MAX_INTERRUPTIONS`` times fails with "server restarted" (a
        job that brings the server down cannot do it forever), and one that a client had
        asked to cancel ends cancelled. Returns how many jobs were loaded, and those to queue."""
        if self.journal is None:
            return 0, []
        recovered, requeued = [], []
        for loaded in sorted(self.journal.load(), key=lambda r: r.created_at):
            record = loaded
            interrupted = record.interrupted + (record.state is JobState.RUNNING)
            if not record.terminal and record.cancel_requested:
                record = record.evolve(state=JobState.CANCELLED, error="cancelled", finished_at=now)
            elif not record.terminal and interrupted >= MAX_INTERRUPTIONS:
                record = record.evolve(state=JobState.FAILED, error="server restarted", finished_at=now)
            elif not record.terminal:
                record = record.evolve(
                    state=JobState.QUEUED, started_at=None, group=None, step=None, total=None, interrupted=interrupted
                )
            elif record.state is JobState.SUCCEEDED and record.output_file is not None:
                record = self._checked(record)
            if record is not loaded:
                self.journal.record(record)
            job = self.add(record)
            job.restored, job.ended_at_start = True, record is not loaded and record.terminal
            if record.terminal:
                recovered.append(job)
                job.done.set()
            else:
                requeued.append(job)
        for job in sorted(recovered, key=lambda job: job.record.finished_at or 0.0):
            self.ended(job)
        count = len(self.jobs)
        # Records whose TTL ran out while the server was down go now, with their files.
        self.expire(now)
        return count, requeued

    def _checked(self, record: JobRecord) -> JobRecord:
        """A loaded succeeded record, its output kept only if it names the file this server
        would have written for it and that file is there, whole (its checksum is checked
        when it is first served)."""
        if record.output_sha256 is None or record.output_size is None:
            return record.evolve(state=JobState.FAILED, error="server restarted before the output was saved")
        expected = self._own_file(record)
        if expected is None or str(expected) != record.output_file:
            log.warning("job %s: its record names a file this server does not write; its output is dropped", record.id)
            return record.evolve(output_file=None, error=f"{GONE}: its record was changed")
        try:
            info = os.stat(expected, follow_symlinks=False)
        except OSError:
            return record.evolve(output_file=None, error=f"{GONE}: its file is missing")
        if not stat.S_ISREG(info.st_mode) or info.st_size != record.output_size:
            return record.evolve(output_file=None, error=f"{GONE}: its file changed on disk")
        return record

    def _own_file(self, record: JobRecord) -> Path | None:
        if record.output_path is None:
            if record.file_type is None or not FILE_TYPE.fullmatch(record.file_type):
                return None
            return self.store.job_file(record.id, record.file_type)
        try:
            return self.store.confine(record.output_path)
        except InputError:
            return None

    def expire(self, now: float) -> None:
        """Forget the jobs that ended more than ``result_ttl`` seconds before ``now``, and
        delete the server's own copies of their outputs (never a client's output_path).
        Jobs end in order, so this looks only at the oldest ones."""
        cutoff = now - self.settings.result_ttl
        while self._ended and (self._ended[0].record.finished_at or 0) < cutoff:
            self.forget(self._ended.popleft())

    def forget(self, job: Job) -> None:
        """Forget an ended job now, as expiry does (a client deleting it)."""
        if self.jobs.get(job.id) is not job:
            return
        del self.jobs[job.id]
        self.order.remove(job.id)
        self.outputs.forget(job.id)
        self.previews.forget(job.id)
        if self.journal is not None:
            self.journal.forget(job.id)
        record = job.record
        if record.media:
            self.inputs.delete_behind(job.id)
        if record.output_file is not None and record.output_path is None:
            self.store.delete_behind(Path(record.output_file))  # queued after its own write-behind
        elif record.output_file is not None:  # a client's path: the file stays, the entry goes
            self.store.delete_behind(Path(record.output_file), unlink=False)
