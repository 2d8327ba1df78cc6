"""The executor of a group whose ranks run on a joined host (server process).

It starts nothing itself: ``launch`` puts the generation in the host's orders, which the
host's ``join`` fetches (a long poll) and makes so with the executor it runs there; the host
reports back when the ranks started, when one exited and when none is left. A host that is
lost or leaves (``gone``) ends the generation as an exit would, so the group faults at once
and its job runs again elsewhere.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import msgspec

from para_attn_server.cluster.spec import HostEvent
from para_attn_server.errors import SetupError
from para_attn_server.workers.executor import Executor, NoOptions, RankSpec


class RemoteExecutor(Executor):
    """``publish()`` is called whenever what the host should run changes."""

    def __init__(self, host: str, num_ranks: int, publish: Callable[[], None]) -> None:
        super().__init__(num_ranks, NoOptions())
        self.host = host
        self.spec: RankSpec | None = None  # what the host is told to run (None: nothing)
        self.gone: str | None = None  # why the host is gone, once it is
        self._publish = publish
        self._generation = 0
        self._exit: asyncio.Future[str] | None = None
        self._stopped = asyncio.Event()
        self._stopped.set()
        self._pids: dict[int, int] = {}

    async def launch(self, spec: RankSpec) -> None:
        if self.gone is not None:
            raise SetupError(f"host {self.host} is gone: {self.gone}")
        self._generation = spec.generation
        self._exit = asyncio.get_running_loop().create_future()
        self._stopped.clear()
        self._pids = {}
        # The host makes its own proof of the token; a pickle never leaves this host.
        self.spec = msgspec.structs.replace(spec, join_token="", predictor_pickle=None)
        self._publish()

    async def wait_exit(self) -> str:
        exited = self._exit
        assert exited is not None, "not launched"
        await asyncio.wait({exited})  # wait, not await: the watcher's cancel must not cancel it
        return exited.result()

    async def wait_stopped(self, timeout: float) -> bool:
        # asyncio.wait, not wait_for: that can swallow a cancel that meets the event (3.11)
        waiter = asyncio.ensure_future(self._stopped.wait())
        done, _ = await asyncio.wait({waiter}, timeout=timeout)
        waiter.cancel()
        return bool(done)

    async def terminate(self, grace: float) -> None:
        if self.spec is not None:
            self.spec = None
            self._publish()
        # The host stops them within grace (SIGTERM, then SIGKILL); allow for its poll.
        if self.gone is None:
            await self.wait_stopped(grace + 5)
        self._pids = {}

    def pids(self) -> dict[int, int]:
        return dict(self._pids)

    def report(self, event: HostEvent) -> None:
        """What the host said of this group's ranks."""
        if event.generation != self._generation:
            return  # an earlier generation's
        if event.kind == "started":
            self._pids = dict(event.pids)
        elif event.kind == "exited":
            self._exited(f"{event.detail} on host {self.host}")
        elif event.kind == "stopped":
            self._exited(f"the ranks on host {self.host} stopped")
            self._stopped.set()

    def lose(self, reason: str) -> None:
        """The host is gone (lost or left): its ranks count as exited."""
        self.gone = reason
        self._exited(f"host {self.host} {reason}")
        self._stopped.set()

    def _exited(self, reason: str) -> None:
        if self._exit is not None and not self._exit.done():
            self._exit.set_result(reason)
