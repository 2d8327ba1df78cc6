"""Worker groups coming and going while the server serves.

The server's own groups start with it; a joined host's groups are added while it serves
(``add_group``: started, with back-off, then supervised like the rest). A group leaves at
once when its host is lost (its job, cut short by the fault, runs again elsewhere), or after
a drain: it takes no new job, and what it runs finishes or, past the drain's time, is stopped
and queued again as a planned attempt that does not count toward ``--max-attempts``.
A mixin of ``JobService``: its attributes are the service's.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

from para_attn_server.engine.supervisor import start_with_backoff, supervise
from para_attn_server.errors import SetupError

if TYPE_CHECKING:
    from para_attn_server.engine.contract import Group
    from para_attn_server.engine.dispatcher import Dispatcher
    from para_attn_server.engine.queue import JobQueue
    from para_attn_server.engine.registry import Job
    from para_attn_server.settings import JobSettings

log = logging.getLogger("para_attn_server.jobs")


class GroupMembership:
    dispatcher: Dispatcher[Job]
    queue: JobQueue[Job]
    settings: JobSettings
    counters: dict[str, int]
    started: bool
    accepting: bool
    _tasks: list[asyncio.Task[None]]
    _supervisors: dict[int, asyncio.Task[None]]

    def _deadline(self, job: Job) -> None:
        raise NotImplementedError

    async def _expire_loop(self) -> None:
        raise NotImplementedError

    if TYPE_CHECKING:  # JobRunning's, after this class in JobService's bases

        def preempt(self, group: Group, reason: str) -> None: ...

    @property
    def groups(self) -> list[Group]:
        """Every group serving now (the dispatcher's list: groups join and leave)."""
        return self.dispatcher.groups

    async def start(self) -> None:
        """First start of the server's own groups; raises ``SetupError`` if any fails. A
        server with none (a front for joined hosts) takes jobs at once."""
        results = await asyncio.gather(*(group.start() for group in self.groups), return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                await asyncio.gather(*(group.stop() for group in self.groups))
                raise result
        self.started = True
        self.accepting = True
        for job in self.queue:  # recovered: their deadlines count from when they were accepted
            self._deadline(job)
        self._tasks = [asyncio.create_task(self.dispatcher.run()), asyncio.create_task(self._expire_loop())]
        for group in self.groups:
            self._supervisors[group.index] = asyncio.create_task(self._supervise(group))

    def add_group(self, group: Group, refused: Callable[[str], None] | None = None) -> None:
        """A group that joined while serving: started now, then kept serving. With ``refused``,
        a first start that fails calls it with the reason instead of retrying."""
        self.dispatcher.add(group)
        self._supervisors[group.index] = asyncio.create_task(self._supervise(group, first=refused or True))

    async def remove_group(self, group: Group, reason: str, drain: float | None = None) -> None:
        """Take ``group`` out: now (``drain`` None: it faulted or its host is gone, and its
        job already ended or is ending), or once it finished what it runs, stopping that past
        ``drain`` seconds to run it again elsewhere."""
        self.dispatcher.hold(group)
        if drain is not None:
            try:
                await asyncio.wait_for(self.dispatcher.idle(group), drain)
            except TimeoutError:
                log.warning("group %d: drained for %g s; its jobs stop to run elsewhere", group.index, drain)
                self.preempt(group, reason)
        await self.dispatcher.idle(group)
        supervisor = self._supervisors.pop(group.index, None)
        while supervisor is not None and not supervisor.done():
            # Again until it ends: Python 3.11's wait_for can swallow a cancel that meets a result.
            supervisor.cancel()
            await asyncio.wait({supervisor}, timeout=1.0)
        await group.stop()
        self.dispatcher.remove(group)
        self.dispatcher.wake()

    async def _supervise(self, group: Group, first: Callable[[str], None] | bool = False) -> None:
        def restarted() -> None:
            self.counters["restarts"] += 1
            self.dispatcher.wake()

        s = self.settings
        if callable(first):
            try:
                await group.start()
            except SetupError as exc:
                first(str(exc))
                return
        elif first:
            await start_with_backoff(group, s.restart_backoff, s.restart_backoff_max)
        self.dispatcher.wake()
        idle = self.dispatcher.idle
        await supervise(group, lambda: idle(group), restarted, s.restart_backoff, s.restart_backoff_max)
