"""Observers of job events in the server process.

The job service tells two kinds of observer about its jobs: plugins' ``job_state_changed``
hooks (one per server process) and the ``JobObserver`` callables (job listeners) that one
app's objects add with ``JobService.add_listener`` (a metrics registry or a webhook sender
lives as long as its app, and several apps may share a process). An observer's error is
logged and swallowed: it must never break the job it watches.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING

from para_attn_server.errors import LimitError

if TYPE_CHECKING:
    from para_attn_server.engine.registry import Job, JobEvent
    from para_attn_server.plugin.manager import Plugins
    from para_attn_server.records import JobRecord
    from para_attn_server.settings import JobSettings

log = logging.getLogger("para_attn_server.jobs")

#: ``observer(kind, record)``: ``kind`` is ``"state"`` (the record entered a new state),
#: ``"progress"`` (a step boundary passed: ``record.step`` of ``record.total``) or
#: ``"requeued"`` (its run was cut short by a lost rank or host and it is queued again:
#: ``record.attempts[-1]`` says where and why; a ``"state"`` event follows); more kinds may
#: come (previews), so an observer ignores kinds it does not know.
JobObserver = Callable[[str, "JobRecord"], None]


class JobObservers:
    """Both kinds of observer, told of each job event in turn."""

    def __init__(self, plugins: Plugins) -> None:
        self.plugins = plugins
        self._added: list[JobObserver] = []

    def add(self, observer: JobObserver) -> Callable[[], None]:
        """Call ``observer`` on every job event from now on; returns what removes it."""
        self._added.append(observer)
        return lambda: self._added.remove(observer)

    def notify(self, kind: str, record: JobRecord) -> None:
        if kind == "state":
            try:
                self.plugins.job_state_changed(record)
            except Exception:
                log.exception("job_state_changed hook failed")
        for observer in list(self._added):
            try:
                observer(kind, record)
            except Exception:
                log.exception("job listener %r failed on a %s event", observer, kind)


class EventStreams:
    """The event streams (SSE) open on jobs, within their caps: in all and per job."""

    def __init__(self, settings: JobSettings) -> None:
        self.settings = settings
        self.open_count = 0

    def open(self, job: Job, retry_after: int) -> contextlib.AbstractAsyncContextManager[asyncio.Queue[JobEvent]]:
        """A queue of the job's events while the context lasts; LimitError past a cap."""
        if self.open_count >= self.settings.max_event_streams:
            raise LimitError(f"too many event streams open ({self.open_count})", retry_after)
        if len(job.subscribers) >= self.settings.max_event_streams_per_job:
            raise LimitError(f"too many event streams open for this job ({len(job.subscribers)})", 1)
        return self._subscription(job)

    @contextlib.asynccontextmanager
    async def _subscription(self, job: Job) -> AsyncIterator[asyncio.Queue[JobEvent]]:
        queue: asyncio.Queue[JobEvent] = asyncio.Queue()
        job.subscribers.append(queue)
        self.open_count += 1
        try:
            yield queue
        finally:
            self.open_count -= 1
            job.subscribers.remove(queue)
