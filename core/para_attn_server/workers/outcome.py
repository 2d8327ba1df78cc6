"""How a job ended, from what each rank reported: the policy, apart from the group's
connections and processes.

A job succeeds when rank 0 returned its output and no rank failed (a cancel that arrived
before the end still wins). Otherwise every rank must have left the job: one that did not
within ``error_grace`` is stuck in a collective its peers abandoned, and the group must be
restarted. A fault of the group meanwhile (a rank died) is the cause, and the other ranks'
errors only echo it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass

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


class RunningJob:
    """What the group knows of the job it runs: each rank's report, and when it decided."""

    def __init__(self, job_id: str, on_progress: ProgressCallback, on_preview: PreviewCallback | None = None) -> None:
        self.job_id = job_id
        self.on_progress = on_progress
        self.on_preview = on_preview
        self.ended: dict[int, JobEnded] = {}
        self.decided = asyncio.get_running_loop().create_future()
        self.all_ended = asyncio.get_running_loop().create_future()
        self.cancel_requested_at: float | None = None
        self.poke = asyncio.get_running_loop().create_future()  # wakes run() on cancel

    def failures(self) -> list[JobEnded]:
        return sorted((e for e in self.ended.values() if e.status == "failed"), key=lambda e: e.rank)


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
    return (JobOutcome("failed", error=error) if failures else JobOutcome("cancelled")), stuck
