"""The dispatcher: which group runs the next job.

One FIFO queue feeds every worker group: the job at the head goes to the first idle, ready
group. This is the only place that pairs jobs with groups, so that a later policy (lend
several idle groups to one wide job, split a wide group when the queue is deep) changes this
module only.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Generic, TypeVar

if TYPE_CHECKING:
    from para_attn_server.engine.contract import Group

log = logging.getLogger("para_attn_server.dispatch")
J = TypeVar("J")


class Dispatcher(Generic[J]):
    """``execute(job, group)`` is called as the job leaves the queue, and what it returns is
    awaited in a task of its own: whatever ``execute`` does before returning (marking the job
    running) is done before anything else can see the job out of the queue."""

    def __init__(
        self, groups: Sequence[Group], queue: deque[J], execute: Callable[[J, Group], Awaitable[None]]
    ) -> None:
        self.groups = groups
        self.queue = queue
        self._execute = execute
        self._busy: dict[int, J] = {}  # group index -> the job it runs
        self._idle = {group.index: asyncio.Event() for group in groups}
        for event in self._idle.values():
            event.set()
        self._wake = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()

    def wake(self) -> None:
        """Something changed: a job was queued, a group became ready, a job ended."""
        self._wake.set()

    def pick(self) -> Group | None:
        """The group for the job at the head of the queue: the first idle, ready one."""
        for group in self.groups:
            if group.ready and group.index not in self._busy:
                return group
        return None

    def running(self) -> dict[int, J]:
        """Group index -> the job it runs now."""
        return dict(self._busy)

    async def idle(self, group: Group) -> None:
        """Return once ``group`` runs no job."""
        await self._idle[group.index].wait()

    async def run(self) -> None:
        while True:
            self._wake.clear()
            while self.queue and (group := self.pick()) is not None:
                self._start(self.queue.popleft(), group)
            await self._wake.wait()

    def _start(self, job: J, group: Group) -> None:
        self._busy[group.index] = job
        self._idle[group.index].clear()
        task = asyncio.create_task(self._run(self._execute(job, group), group))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(self, work: Awaitable[None], group: Group) -> None:
        try:
            await work
        except Exception:  # the executor handles job errors; a bug here must not stop dispatching
            log.exception("dispatching a job to group %d failed", group.index)
        finally:
            del self._busy[group.index]
            self._idle[group.index].set()
            self.wake()
