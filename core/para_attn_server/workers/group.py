"""The worker group as the server sees it: control connections, setup, jobs, faults.

One ``WorkerGroup`` owns one set of rank processes at a time (one *generation*). It
launches them through an executor, accepts each rank's control connection, waits for every
rank's setup, runs one job at a time (sent to every rank), and turns every kind of fault
into a ``fault`` with a reason a person can act on:

- a rank process exits (the executor reports it);
- a rank stops sending heartbeats for ``heartbeat_timeout`` seconds;
- a rank closes its control connection;
- a job runs past its timeout, or ignores a cancel for ``cancel_grace`` seconds;
- a rank fails a job while a peer stays inside it (stuck in a collective) past ``error_grace``.

After a fault the group must be restarted (``start()`` again); the job service does that.
A job that fails the same way on every rank (they all report within ``error_grace``) leaves
the group consistent, so no restart is needed.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import secrets
import socket
import time
from collections.abc import Callable, Sequence
from typing import Any

import msgspec

from para_attn_server.adapters import AdapterStats
from para_attn_server.errors import SetupError
from para_attn_server.lorafiles import AdapterFit
from para_attn_server.protocol import (
    BatchItem,
    CancelJob,
    Heartbeat,
    Hello,
    JobEnded,
    Preview,
    Progress,
    RunJob,
    SetupDone,
    SetupFailed,
    Shutdown,
    encode_frame,
)
from para_attn_server.settings import GroupSettings
from para_attn_server.views import GroupStatus, RankRow
from para_attn_server.workers.control import ControlListener, RankLink
from para_attn_server.workers.executor import Executor, RankSpec
from para_attn_server.workers.outcome import (
    BatchMember,
    JobOutcome,
    PreviewCallback,
    ProgressCallback,
    RunningJob,
    decide_outcome,
)

log = logging.getLogger("para_attn_server.group")
# After a rank's connection closes, how long the executor may take to say how it ended (killed,
# an exit code: the better reason). torchrun's agent reports once it stopped the other ranks.
EXIT_REPORT_WAIT = 5.0


class GroupState(enum.StrEnum):
    STOPPED = "stopped"
    STARTING = "starting"
    READY = "ready"
    BUSY = "busy"
    FAULTED = "faulted"  # waiting for a restart


class WorkerGroup:
    """One group of ranks. ``spec`` is what its ranks are told; each generation fills in
    its own control port, token and generation number."""

    def __init__(
        self, index: int, executor: Executor, settings: GroupSettings, spec: RankSpec, host: str | None = None
    ) -> None:
        self.index = index
        self.host = host or socket.gethostname()  # where its ranks run (a joined host's name)
        self.model = spec.model_name  # the served model whose jobs it runs
        self.executor = executor
        self.settings = settings
        self.spec = spec
        self.world_size = spec.world_size
        self.state = GroupState.STOPPED
        self.generation = 0
        self.restarts = 0
        self.last_fault: str | None = None
        self.links: dict[int, RankLink] = {}
        self._token = ""
        self._control = ControlListener(
            settings.control_host, spec.settings.max_output_bytes, self._accept, self._handle, self._link_closed
        )
        self._fault: asyncio.Future[str] | None = None
        self._setup: asyncio.Future[None] | None = None
        self._watchers: list[asyncio.Task[None]] = []
        self._running: RunningJob | None = None
        self.on_launch: Callable[[RankSpec], None] | None = None
        self._local_loss: asyncio.Future[str] | None = None  # the generation in which a rank here went
        self.adapter_fit: AdapterFit | None = None  # what adapters must fit, from rank 0's setup
        self.adapters = AdapterStats()

    # ---- lifecycle --------------------------------------------------------------------

    async def open(self) -> None:
        port = await self._control.open()
        log.info("worker group %d: ranks connect to %s:%d", self.index, self.settings.control_host, port)

    @property
    def fault(self) -> asyncio.Future[str]:
        """Resolves with the reason as soon as the current generation faults."""
        assert self._fault is not None, "group not started"
        return self._fault

    @property
    def ready(self) -> bool:
        return self.state in (GroupState.READY, GroupState.BUSY)

    async def start(self) -> None:
        """Launch a new generation and wait until every rank finished setup.

        Raises ``SetupError`` naming the failing rank and its error.
        """
        if self.generation:
            await self._teardown()
        if not self._control.port:  # a group added while serving (a joined host's)
            await self.open()
        loop = asyncio.get_running_loop()
        self.generation += 1
        self._token = secrets.token_hex(16)
        self._fault = loop.create_future()
        self._setup = loop.create_future()
        self.links = {}
        self.adapters.loaded = []  # new ranks hold no adapter
        self.state = GroupState.STARTING
        s = self.settings
        spec = msgspec.structs.replace(
            self.spec, control_port=self._control.port, token=self._token, generation=self.generation
        )
        # With the "ready" line, this line times each generation's setup (the operator's
        # view of a restart; the reliability tests measure recovery from both).
        log.info("worker group %sgeneration %d starting (%d ranks)", self._name, self.generation, self.world_size)
        await self.executor.launch(spec)
        if self.on_launch is not None:
            self.on_launch(spec)  # joined hosts start their part of this generation from it
        self._watchers = [
            asyncio.create_task(self._watch_exits(self._fault)),
            asyncio.create_task(self._watch_heartbeats(self._fault)),
        ]
        waits: set[asyncio.Future[Any]] = {self._setup, self._fault}
        done, _ = await asyncio.wait(waits, timeout=s.setup_timeout, return_when=asyncio.FIRST_COMPLETED)
        if self._setup in done and self._setup.exception() is None:
            self.state = GroupState.READY
            log.info("worker group %sgeneration %d ready (%d ranks)", self._name, self.generation, self.world_size)
            return
        if self._setup.done() and self._setup.exception() is not None:
            reason = str(self._setup.exception())
        elif self._fault.done():
            reason = self._fault.result()
        else:
            reason = f"setup did not finish within {s.setup_timeout:g} s"
        self._set_fault(reason)
        await self._teardown()
        raise SetupError(reason)

    async def stop(self) -> None:
        """Ask the ranks to exit cleanly, then make sure they are gone."""
        if self.state is GroupState.STOPPED:
            return
        was_ready = self.ready
        self.state = GroupState.STOPPED  # exits from here on are expected, not faults
        if self.links and was_ready:
            self._send_all(Shutdown())
            await self.executor.wait_stopped(self.settings.stop_grace)
        await self._teardown()
        self._control.close()

    async def _teardown(self) -> None:
        self.state = GroupState.STOPPED
        for task in self._watchers:
            task.cancel()
        self._watchers = []
        await self.executor.terminate(self.settings.stop_grace)
        for link in self.links.values():
            link.close()
        self.links = {}

    def _set_fault(self, reason: str) -> None:
        if self.state is GroupState.STOPPED:
            return  # stopping on purpose: the ranks' exits are expected
        if self._fault is not None and not self._fault.done():
            log.error("worker group %sgeneration %d fault: %s", self._name, self.generation, reason)
            self.last_fault = reason
            self._fault.set_result(reason)
            if self.state is not GroupState.STARTING:
                self.state = GroupState.FAULTED

    # ---- jobs -------------------------------------------------------------------------

    async def run(
        self,
        job_id: str,
        inputs: dict[str, Any],
        timeout: float | None,
        on_progress: ProgressCallback,
        on_preview: PreviewCallback | None = None,
        media: dict[str, bytes] | None = None,
        batch: Sequence[BatchMember] = (),
    ) -> JobOutcome:
        """Run one job on every rank and return how it ended. Never raises for job faults:
        a fault fails the job with its reason and leaves the group FAULTED.

        With ``batch``, the jobs beside this one (its leader) run in the same call
        (``Predictor.predict_batch``; ``media``: all their pictures): each gets every step's
        progress and its own previews, and the outcome holds each one's in ``members``. A
        cancel of the leader stops them all; a fault or a timeout fails them all."""
        assert self.state is GroupState.READY, self.state
        loop = asyncio.get_running_loop()
        fault = self.fault
        running = self._running = RunningJob(job_id, on_progress, on_preview, batch)
        self.state = GroupState.BUSY
        try:
            # The same frame, in the same order, to every rank.
            self._send_all(RunJob(job_id, inputs, media or {}, [BatchItem(m.job_id, m.inputs) for m in batch]))
            deadline = None if timeout is None else loop.time() + timeout
            while not running.decided.done():
                waits = [] if deadline is None else [deadline - loop.time()]
                if running.cancel_requested_at is not None:
                    waits.append(running.cancel_requested_at + self.settings.cancel_grace - loop.time())
                await asyncio.wait(
                    {running.decided, fault, running.poke},
                    timeout=max(0.0, min(waits)) if waits else None,
                    return_when=asyncio.FIRST_COMPLETED,
                )
                if running.poke.done():
                    running.poke = loop.create_future()
                    continue
                if running.decided.done():
                    break
                if fault.done():
                    lost = JobOutcome("failed", error=fault.result(), lost=True)
                    return running.with_members(lost, reported=False)
                if deadline is not None and loop.time() >= deadline:
                    self._set_fault(f"job timed out after {timeout:g} s")
                    error = f"job timed out after {timeout:g} s; the worker group was restarted"
                    return running.with_members(JobOutcome("failed", error=error), reported=False)
                if running.cancel_requested_at is not None:
                    self._set_fault(f"a cancelled job did not stop within {self.settings.cancel_grace:g} s")
                    error = "cancelled; the worker group was restarted to stop it"
                    return running.with_members(JobOutcome("cancelled", error=error), reported=False)
            return running.with_members(await self._outcome(running, fault))
        finally:
            self._running = None
            if self.state is GroupState.BUSY:
                self.state = GroupState.READY

    async def _outcome(self, running: RunningJob, fault: asyncio.Future[str]) -> JobOutcome:
        outcome, stuck = await decide_outcome(running, fault, self.world_size, self.settings.error_grace)
        if stuck is not None:
            self._set_fault(stuck)
        return outcome

    def cancel(self, job_id: str) -> bool:
        """Ask every rank to stop the running job at its next step boundary."""
        running = self._running
        if running is None or running.job_id != job_id:
            return False
        if running.cancel_requested_at is None:
            running.cancel_requested_at = asyncio.get_running_loop().time()
            self._send_all(CancelJob(job_id))
            if not running.poke.done():
                running.poke.set_result(None)  # so run() starts the cancel-grace clock
        return True

    # ---- status -----------------------------------------------------------------------

    @property
    def _name(self) -> str:
        # Log lines keep their single-group wording; with several groups they name theirs.
        return f"{self.index} " if self.spec.group or self.index else ""

    def status(self) -> GroupStatus:
        busy = self.state is GroupState.BUSY
        adapters = msgspec.structs.replace(self.adapters, loaded=list(self.adapters.loaded))
        ranks = self.rank_rows()
        return GroupStatus(
            self.index, self.ready, busy, self.restarts, self.last_fault, ranks, adapters, self.host, self.model
        )

    def rank_rows(self) -> list[RankRow]:
        now = time.monotonic()
        pids = self.executor.pids()
        rows = []
        for rank in range(self.world_size):
            link = self.links.get(rank)
            if link and link.setup_done and self.ready:
                state = "busy" if self.state is GroupState.BUSY else "ready"
            else:
                state = "setting up" if link else "starting"
            pid = link.pid if link else pids.get(rank)
            seen = round(now - link.last_seen, 3) if link else None
            rows.append(RankRow(rank, self.index, pid, link.hostname if link else None, state, seen))
        return rows

    # ---- control connections ----------------------------------------------------------

    def _send_all(self, message: msgspec.Struct) -> None:
        frame = encode_frame(message)
        for link in self.links.values():
            link.send_frame(frame)

    def _accept(self, hello: Hello) -> bool:
        # bytes: compare_digest refuses a str with non-ASCII characters (a stranger's token)
        right = secrets.compare_digest(hello.token.encode(), self._token.encode())
        if self.spec.join_token:  # a group that spans hosts: its ranks hold the join token too
            right &= secrets.compare_digest(hello.join_token.encode(), self.spec.join_token.encode())
        return right and hello.generation == self.generation and 0 <= hello.rank < self.world_size

    def _link_closed(self, link: RankLink) -> None:
        if self.links.get(link.rank) is not link or self.state is GroupState.STOPPED:
            return
        fault, reason = self._fault, f"rank {link.rank} (pid {link.pid}) closed its control connection"
        if link.node and self._local_loss is not fault:
            # A joined host's rank, and no rank here went first (its peers leave after it):
            # no executor here will say how it ended.
            self._set_fault(f"node {link.node} left: {reason}")
            return
        self._local_loss = fault
        # A rank that dies closes its connection as it goes; give the executor's report of
        # how it died (killed by SIGKILL, exit code) a moment to be the reason.

        def late_fault() -> None:
            if self._fault is fault:
                self._set_fault(reason)

        asyncio.get_running_loop().call_later(EXIT_REPORT_WAIT, late_fault)

    def _handle(self, link: RankLink, message: Any) -> bool:
        if message.__class__ is not Hello and self.links.get(link.rank) is not link:
            return False  # an earlier generation's link
        match message:
            case Hello():
                self.links[link.rank] = link
            case Heartbeat():
                pass
            case Progress(job_id=job_id, step=step, total=total):
                if self._running is not None:
                    self._running.progress(job_id, step, total)
            case Preview(job_id=job_id, step=step, jpeg=jpeg):
                if self._running is not None:
                    self._running.preview(job_id, step, jpeg)
            case JobEnded():
                running = self._running
                if running is not None and running.report(message, self.world_size) and message.adapters is not None:
                    self.adapters.add(message.adapters)
            case SetupDone(rank=rank):
                link.setup_done = True
                if rank == 0:
                    self.adapter_fit = message.adapter_fit
                if (
                    self._setup is not None
                    and not self._setup.done()
                    and all(r in self.links and self.links[r].setup_done for r in range(self.world_size))
                ):
                    self._setup.set_result(None)
            case SetupFailed(rank=rank, error=error):
                if self._setup is not None and not self._setup.done():
                    self._setup.set_exception(SetupError(f"setup failed on rank {rank}: {error}"))
                self._set_fault(f"setup failed on rank {rank}: {error}")
            case _:
                log.warning("unexpected message from rank %d: %r", link.rank, message)
        return True

    # ---- watchers ---------------------------------------------------------------------

    async def _watch_exits(self, fault: asyncio.Future[str]) -> None:
        reason = await self.executor.wait_exit()
        if not fault.done():
            # A SetupFailed report usually arrives just before the exit; prefer its text.
            await asyncio.sleep(0.2)
            self._set_fault(reason)

    async def _watch_heartbeats(self, fault: asyncio.Future[str]) -> None:
        interval = self.spec.settings.heartbeat_interval
        limit = self.settings.heartbeat_timeout
        while not fault.done():
            await asyncio.sleep(interval)
            now = time.monotonic()
            for link in list(self.links.values()):
                if now - link.last_seen > limit:
                    self._set_fault(
                        f"rank {link.rank} (pid {link.pid}) sent no heartbeat for {now - link.last_seen:.1f} s"
                    )
                    return
