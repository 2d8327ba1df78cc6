"""How a job ended, from what each rank reported: the policy, apart from the group's
connections and processes.

A job succeeds when rank 0 returned its output and no rank failed (a cancel that arrived
before the end still wins). Otherwise every rank must have left the job: one that did not
within ``error_grace`` is stuck in a collective its peers abandoned, and the group must be
restarted. A fault of the group meanwhile (a rank died) is the cause, and the other ranks'
errors only echo it.

A batch (jobs run as one call) is one job to the ranks, its leader's: the leader's outcome
is the batch's. Each other job gets its own from rank 0's report of it (its output, or the
reason it has none) when the batch ended normally; a cancel, a fault or a timeout ends them
all alike (``RunningJob.with_members``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from para_attn_server.protocol import JobEnded

ProgressCallback = Callable[[int, int | None], None]
PreviewCallback = Callable[[int, bytes], None]  # (step, jpeg)


@dataclass
class JobOutcome:
    status: str  # "succeeded" | "failed" | "cancelled"
    error: str | None = None
    output: bytes | None = None
    file_type: str | None = None
    base64: bool = False  # ``output`` is base64 text
    # The group lost a rank or its host while it ran (a process died, a connection closed,
    # heartbeats stopped): not the job's own doing, so it may run again elsewhere.
    lost: bool = False
    # A batch's leader: each other job's own outcome, by id (empty for a lone job).
    members: dict[str, JobOutcome] = field(default_factory=dict)


@dataclass
class BatchMember:
    """A job that runs in the same pipeline call as the one ``WorkerGroup.run`` was given."""

    job_id: str
    inputs: dict[str, Any]
    on_progress: ProgressCallback
    on_preview: PreviewCallback | None = None


class RunningJob:
    """What the group knows of the job (or batch) it runs: each rank's report, and when it
    decided; it routes the ranks' messages about it to the callbacks of the job they concern."""

    def __init__(
        self,
        job_id: str,
        on_progress: ProgressCallback,
        on_preview: PreviewCallback | None = None,
        batch: Sequence[BatchMember] = (),
    ) -> None:
        self.job_id = job_id
        self.on_progress = on_progress
        self.on_preview = on_preview
        self.members = {member.job_id: member for member in batch}  # the jobs beside the leader
        self.member_ended: dict[str, JobEnded] = {}  # rank 0's report of each of them
        self.ended: dict[int, JobEnded] = {}  # each rank's end of the leader's job
        self.decided = asyncio.get_running_loop().create_future()
        self.all_ended = asyncio.get_running_loop().create_future()
        self.cancel_requested_at: float | None = None
        self.poke = asyncio.get_running_loop().create_future()  # wakes run() on cancel

    def failures(self) -> list[JobEnded]:
        return sorted((e for e in self.ended.values() if e.status == "failed"), key=lambda e: e.rank)

    def progress(self, job_id: str, step: int, total: int | None) -> None:
        """A step of the batch (reported under the leader's id): every job of it moved."""
        if job_id != self.job_id:
            return  # an earlier job's late report
        self.on_progress(step, total)
        for member in self.members.values():
            member.on_progress(step, total)

    def preview(self, job_id: str, step: int, jpeg: bytes) -> None:
        """A preview, to the job whose id it carries."""
        member = self.members.get(job_id)
        callback = self.on_preview if job_id == self.job_id else member.on_preview if member else None
        if callback is not None:
            callback(step, jpeg)

    def report(self, message: JobEnded, world_size: int) -> bool:
        """Take a rank's end of a job of this run; False when it concerns another job."""
        if message.job_id in self.members:
            if message.rank == 0:  # only rank 0 reports the other jobs of a batch
                self.member_ended[message.job_id] = message
            return True
        if message.job_id != self.job_id:
            return False
        self.ended[message.rank] = message
        if not self.decided.done() and (message.rank == 0 or message.status != "succeeded"):
            self.decided.set_result(None)
        if len(self.ended) == world_size and not self.all_ended.done():
            self.all_ended.set_result(None)
        return True

    def with_members(self, outcome: JobOutcome, *, reported: bool = True) -> JobOutcome:
        """The leader's ``outcome`` with every other job's in ``members``. ``reported``: the
        batch ended as the ranks reported (not by a fault or a timeout), so each job that
        rank 0 reported gets its own outcome, unless the batch was cancelled."""
        for job_id in self.members:
            end = self.member_ended.get(job_id) if reported and outcome.status != "cancelled" else None
            if end is None:
                missing = outcome.status == "succeeded"  # rank 0 ended the batch without this job's report
                error = "rank 0 did not report this job of the batch" if missing else outcome.error
                status = "failed" if missing else outcome.status
                outcome.members[job_id] = JobOutcome(status, error=error, lost=outcome.lost and not missing)
            elif end.status == "succeeded":
                outcome.members[job_id] = JobOutcome(
                    "succeeded", output=end.output, file_type=end.file_type, base64=end.base64
                )
            else:
                outcome.members[job_id] = JobOutcome(end.status, error=end.error)
        return outcome


async def decide_outcome(
    running: RunningJob, fault: asyncio.Future[str], world_size: int, error_grace: float
) -> tuple[JobOutcome, str | None]:
    """The job's outcome, and the fault to raise when a rank is stuck in it (or None)."""
    leader = running.ended.get(0)
    if leader is not None and leader.status == "succeeded" and not running.failures():
        if running.cancel_requested_at is not None:
            # A cancel that arrived before the job ended wins (a pipeline stopped through
            # its own interrupt flag just returns early).
            return JobOutcome("cancelled"), None
        return JobOutcome("succeeded", output=leader.output, file_type=leader.file_type, base64=leader.base64), None
    if not running.all_ended.done():
        await asyncio.wait({running.all_ended, fault}, timeout=error_grace, return_when=asyncio.FIRST_COMPLETED)
    failures = running.failures()
    error = failures[0].error if failures else None
    stuck = None
    if fault.done() and error:
        error = f"{fault.result()}; the worker group was restarted (then {error})"
    elif not running.all_ended.done():
        missing = sorted(set(range(world_size)) - set(running.ended))
        stuck = f"{f'{error}; ' if error else ''}rank(s) {missing} did not leave the job (stuck in a collective)"
        if error:
            error = f"{error} (rank(s) {missing} were left waiting in a collective; the worker group was restarted)"
    lost = fault.done() and bool(error)  # a rank died or left: the others' errors only echo it
    return (JobOutcome("failed", error=error, lost=lost) if failures else JobOutcome("cancelled")), stuck
