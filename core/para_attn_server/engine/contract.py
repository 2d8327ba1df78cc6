"""What the engine needs of a worker group: the one contract the job service, the dispatcher
and the supervisor hold a group to.

``workers.group.WorkerGroup`` satisfies it (and the unit tests' ``FakeGroup``); the engine
never imports the concrete class, so it runs as well over a group of another kind.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    import asyncio
    from collections.abc import Sequence

    from para_attn_server.adapters import AdapterStats
    from para_attn_server.lorafiles import AdapterFit
    from para_attn_server.settings import GroupSettings
    from para_attn_server.views import GroupStatus
    from para_attn_server.workers.outcome import BatchMember, JobOutcome, PreviewCallback, ProgressCallback


class Group(Protocol):
    index: int  # its place among the server's groups; the dispatcher's key (never reused)
    host: str  # the name of the host its ranks run on (a group across hosts: the server's)
    model: str  # the served model whose jobs it runs (its name)
    restarts: int  # the supervisor counts them
    settings: GroupSettings
    last_fault: str | None
    adapter_fit: AdapterFit | None  # what adapters must fit, once set up (None: not said)
    adapters: AdapterStats  # its adapter cache, as its ranks reported it

    @property
    def ready(self) -> bool:
        """Set up and not faulted: it may be given a job."""

    @property
    def fault(self) -> asyncio.Future[str]:
        """Resolves with the reason when the current generation faults."""

    async def start(self) -> None:
        """Start a new generation of ranks and wait for their setup; ``SetupError`` if it fails."""

    async def stop(self) -> None: ...

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
        """Run one job on every rank (``media``: its input pictures' bytes by checksum);
        how it ended, a fault included. ``batch``: the jobs that run in the same call beside
        it (its outcome's ``members`` holds theirs)."""

    def cancel(self, job_id: str) -> bool: ...

    def status(self) -> GroupStatus: ...
