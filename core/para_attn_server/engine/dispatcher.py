"""The dispatcher: which jobs run next, and on which group.

One queue (priority first, then arrival: ``queue.JobQueue``) feeds every worker group. The
job at the head goes to an idle, ready group, preferably one that holds the adapters (LoRA)
the job applies (``wants``), so it need not load them. When no idle group holds them but one
holds every adapter of the job behind it, that job goes first: a job is overtaken this way
once at most, so affinity never delays a job by more than one other.

Models (a server serving several): each group serves one model (``group.model``) and takes
only that model's jobs (``model_of``). Each model is a lane: the order above applies among
its jobs, and a queued job whose model has no idle group never holds up another model's.

Batching (``Batching``, off at ``max_size`` 1): the jobs queued with the head's batch key
(the predictor's ``batch_key``; None: never batched) go with it, up to ``max_size``, in
queue order. With ``wait`` > 0 a head whose batch is not full waits up to that long since
it arrived for more; with 0 a lone job never waits. This is the only place that pairs jobs
with groups, so that a later policy changes this module only.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Collection, Hashable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Generic, TypeVar, cast

from para_attn_server.engine.queue import JobQueue

if TYPE_CHECKING:
    from para_attn_server.engine.contract import Group

log = logging.getLogger("para_attn_server.dispatch")
J = TypeVar("J")


@dataclass(frozen=True)
class Batching(Generic[J]):
    max_size: int = 1
    wait: float = 0.0  # seconds a head job may wait for others to fill its batch
    key: Callable[[J], Hashable | None] = lambda job: None
    arrived: Callable[[J], float] = lambda job: 0.0  # when it was queued (time.time())


class Dispatcher(Generic[J]):
    """``execute(jobs, group)`` is called as the jobs (one, or a batch) leave the queue, and
    what it returns is awaited in a task of its own: whatever ``execute`` does before
    returning (marking them running) is done before anything else can see them out of the queue."""

    def __init__(
        self,
        groups: Sequence[Group],
        queue: JobQueue[J],
        execute: Callable[[list[J], Group], Awaitable[None]],
        wants: Callable[[J], Collection[str]] = lambda job: (),
        batching: Batching[J] | None = None,
        model_of: Callable[[J], str] = lambda job: "",
    ) -> None:
        self.groups: list[Group] = []
        self.queue = queue
        self._execute = execute
        self._wants = wants  # the adapters a job applies
        self._model_of = model_of
        self.batching: Batching[J] = batching or Batching()
        self._overtaken: set[int] = set()  # id() of queued jobs another went ahead of
        self._busy: dict[int, list[J]] = {}  # group index -> the jobs it runs
        self._idle: dict[int, asyncio.Event] = {}
        self._held: set[int] = set()  # groups that take no new job (draining)
        self._wake = asyncio.Event()
        for group in groups:
            self.add(group)
        self._tasks: set[asyncio.Task[None]] = set()
        self._timer: asyncio.TimerHandle | None = None

    def add(self, group: Group) -> None:
        """A group joined: it takes jobs once ready."""
        if group not in self.groups:
            self.groups.append(group)
        self._idle[group.index] = event = asyncio.Event()
        event.set()
        self.wake()

    def remove(self, group: Group) -> None:
        """A group left (it runs no job: ``idle`` returned)."""
        self.groups = [g for g in self.groups if g is not group]
        self._idle.pop(group.index, None)
        self._held.discard(group.index)

    def hold(self, group: Group) -> None:
        """Give ``group`` no new job (it is draining); what it runs goes on."""
        self._held.add(group.index)

    def group(self, index: int) -> Group:
        return next(group for group in self.groups if group.index == index)

    def wake(self) -> None:
        """Something changed: a job was queued, a group became ready, a job ended."""
        self._wake.set()

    def take(self) -> tuple[list[J], Group] | None:
        """The next jobs to start (one, or a batch) and their group, out of the queue
        (None: nothing can start now)."""
        for lane, idle in self._lanes():
            if lane:
                taken = self._take(lane, idle)
                if taken is not None:
                    return taken
        return None

    def _lanes(self) -> Iterator[tuple[Sequence[J], list[Group]]]:
        """Each model with an idle group: its queued jobs in order, and those groups. One
        model (the usual server) is the whole queue."""
        idle = self._idle_groups()
        models = {group.model for group in idle}
        if len(models) == 1 and all(group.model in models for group in self.groups):
            yield cast(Sequence[J], self.queue), idle  # indexable and sized: a lane as it is
            return
        for model in sorted(models):
            yield [job for job in self.queue if self._model_of(job) == model], [g for g in idle if g.model == model]

    def _take(self, lane: Sequence[J], idle: list[Group]) -> tuple[list[J], Group] | None:
        head = lane[0]
        wants = self._wants(head)
        group = max(idle, key=lambda g: len(_held(g, wants))) if wants else idle[0]
        if wants and len(_held(group, wants)) < len(wants) and len(lane) > 1 and id(head) not in self._overtaken:
            second = lane[1]
            behind = self._wants(second)
            holder = next((g for g in idle if behind and len(_held(g, behind)) == len(behind)), None)
            if holder is not None:
                self._overtaken.add(id(head))
                return self._batch(second, lane), holder
        jobs = self._batch(head, lane, hold=True)
        if not jobs:
            return None  # the head waits for its batch to fill
        self._overtaken.discard(id(head))
        if len(self._overtaken) > len(self.queue):  # jobs cancelled while overtaken
            self._overtaken &= {id(job) for job in self.queue}
        return jobs, group

    def _batch(self, first: J, lane: Sequence[J], *, hold: bool = False) -> list[J]:
        """``first`` and the jobs of its lane with its batch key, out of the queue; with
        ``hold``, none when the batch is not full and ``first`` may still wait for more."""
        batching = self.batching
        key = batching.key(first) if batching.max_size > 1 else None
        jobs = [first]
        if key is not None:
            alike = [job for job in lane if job is not first and batching.key(job) == key]
            jobs += alike[: batching.max_size - 1]
            waited = time.time() - batching.arrived(first)
            if hold and len(jobs) < batching.max_size and waited < batching.wait:
                self._wake_in(batching.wait - waited)
                return []
        for job in jobs:
            self.queue.remove(job)
        return jobs

    def _wake_in(self, seconds: float) -> None:
        if self._timer is None or self._timer.when() > asyncio.get_running_loop().time() + seconds:
            if self._timer is not None:
                self._timer.cancel()
            self._timer = asyncio.get_running_loop().call_later(seconds, self.wake)

    def _idle_groups(self) -> list[Group]:
        return [g for g in self.groups if g.ready and g.index not in self._busy and g.index not in self._held]

    def running(self) -> dict[int, list[J]]:
        """Group index -> the jobs it runs now (one, or a batch)."""
        return {index: list(jobs) for index, jobs in self._busy.items()}

    def running_jobs(self) -> list[J]:
        """Every job running now."""
        return [job for jobs in self._busy.values() for job in jobs]

    async def idle(self, group: Group) -> None:
        """Return once ``group`` runs no job."""
        idle = self._idle.get(group.index)
        if idle is not None:
            await idle.wait()

    async def run(self) -> None:
        while True:
            self._wake.clear()
            while (taken := self.take()) is not None:
                self._start(*taken)
            await self._wake.wait()

    def _start(self, jobs: list[J], group: Group) -> None:
        self._busy[group.index] = jobs
        self._idle[group.index].clear()
        task = asyncio.create_task(self._run(self._execute(jobs, group), group))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(self, work: Awaitable[None], group: Group) -> None:
        try:
            await work
        except Exception:  # the executor handles job errors; a bug here must not stop dispatching
            log.exception("dispatching a job to group %d failed", group.index)
        finally:
            del self._busy[group.index]
            if group.index in self._idle:
                self._idle[group.index].set()
            self.wake()


def _held(group: Group, wants: Collection[str]) -> set[str]:
    """Which of ``wants`` the group holds loaded."""
    return set(wants).intersection(group.adapters.loaded)
