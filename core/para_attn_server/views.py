"""What the job service shows: jobs, groups and ranks, and a metrics snapshot.

Plain msgspec Structs built by the service and returned by the HTTP handlers as they are,
so the OpenAPI document describes exactly what is sent.
"""

from __future__ import annotations

import msgspec

from para_attn_server.records import TERMINAL, JobRecord, JobState


class JobView(msgspec.Struct, omit_defaults=True, frozen=True):
    """A job as the /v1 API shows it (and ``para_attn_server.client`` reads it)."""

    id: str
    state: str
    created_at: float
    started_at: float | None = None
    finished_at: float | None = None
    group: int | None = None
    step: int | None = None
    total_steps: int | None = None
    queue_position: int | None = None
    error: str | None = None
    file_type: str | None = None
    output_path: str | None = None
    output_url: str | None = None

    @property
    def done(self) -> bool:
        """True once the job ended: succeeded, failed or cancelled."""
        return self.state in TERMINAL

    @classmethod
    def of(cls, record: JobRecord, queue_position: int | None = None) -> JobView:
        return cls(
            id=record.id,
            state=record.state.value,
            created_at=record.created_at,
            started_at=record.started_at,
            finished_at=record.finished_at,
            group=record.group,
            step=record.step,
            total_steps=record.total,
            queue_position=queue_position,
            error=record.error,
            file_type=record.file_type,
            output_path=record.output_path,
            output_url=f"/v1/jobs/{record.id}/output" if record.state is JobState.SUCCEEDED else None,
        )


class JobList(msgspec.Struct, frozen=True):
    """One page of jobs, newest first; pass ``last_id`` as ``after`` for the next page."""

    data: list[JobView]
    has_more: bool
    last_id: str | None


class RankRow(msgspec.Struct):
    rank: int
    group: int
    pid: int | None
    hostname: str | None
    state: str  # starting, setting up, ready, busy
    last_heartbeat_s: float | None


class GroupStatus(msgspec.Struct):
    group: int
    ready: bool
    busy: bool
    restarts: int
    last_fault: str | None
    ranks: list[RankRow]


class ServerStatus(msgspec.Struct):
    status: str  # "server is running", "starting" or "restarting"
    ready: bool  # at least one group can take jobs
    version: str
    ranks: list[RankRow]  # every rank of every group
    queue_length: int
    busy: bool
    restarts: int
    last_fault: str | None
    groups: list[GroupStatus]


class MetricsSnapshot(msgspec.Struct):
    """Counters and gauges of the job service at one moment."""

    submitted: int
    rejected_queue_full: int
    finished: dict[str, int]  # by final state
    queue_length: int
    running: int
    groups: list[GroupStatus]
