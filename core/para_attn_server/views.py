"""What the job service shows: jobs, groups and ranks, and a metrics snapshot.

Plain msgspec Structs built by the service and returned by the HTTP handlers as they are,
so the OpenAPI document describes exactly what is sent.
"""

from __future__ import annotations

import msgspec

from para_attn_client.wire import AppliedLora, JobList, JobView
from para_attn_server.adapters import LORAS, AdapterStats
from para_attn_server.records import JobRecord, JobState
from para_attn_server.schema import MODEL, PRIORITY

__all__ = ["GroupStatus", "JobList", "JobView", "MetricsSnapshot", "RankRow", "ServerStatus", "job_view"]


def job_view(record: JobRecord, queue_position: int | None = None, model: str | None = None) -> JobView:
    """The record as the /v1 API shows it (``JobView`` and ``JobList`` are the client's
    wire types: the client decodes exactly what is sent); ``model``: its served model's
    name, on a server that serves several."""
    applied = record.inputs.get(LORAS)
    return JobView(
        id=record.id,
        state=record.state.value,
        created_at=record.created_at,
        started_at=record.started_at,
        finished_at=record.finished_at,
        group=record.group,
        host=record.host,
        step=record.step,
        total=record.total,
        total_steps=record.total,
        queue_position=queue_position,
        error=record.error,
        file_type=record.file_type,
        output_path=record.output_path,
        output_url=f"/v1/jobs/{record.id}/output" if record.state is JobState.SUCCEEDED else None,
        loras=[AppliedLora(lora["name"], lora.get("scale", 1.0)) for lora in applied] if applied else None,
        priority=record.inputs.get(PRIORITY) or 0,
        batch_size=record.batch_size,
        model=model or record.inputs.get(MODEL),
        attempts=list(record.runs()) if record.attempts else None,
    )


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
    adapters: AdapterStats = msgspec.field(default_factory=AdapterStats)  # its adapter cache
    host: str = ""  # the host its ranks run on
    model: str = ""  # the served model whose jobs it runs


class HostStatus(msgspec.Struct):
    """A host that serves: the server's own (``local``) or one that joined with its groups."""

    name: str
    state: str  # local, serving, draining, left, lost, refused
    groups: list[int]  # its groups serving now
    devices: int
    group_size: int
    runs: int = 0  # job runs (attempts) its groups started
    joined_at: float | None = None
    last_seen_s: float | None = None  # seconds since it last asked for its orders
    reason: str | None = None  # why it left, was lost or refused


class ModelStatus(msgspec.Struct):
    """A served model: requests choose it by ``name`` (their ``model`` field)."""

    name: str
    predictor: str  # its predictor's class
    groups: list[int]  # the groups that run its jobs
    queue_length: int
    submitted: int = 0
    finished: dict[str, int] = {}  # by final state
    layout: dict[str, int] = {}  # how its groups' ranks split a job: {"ulysses": 2, "cfg": 2}


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
    hosts: list[HostStatus] = []
    models: list[ModelStatus] = []


class MetricsSnapshot(msgspec.Struct):
    """Counters and gauges of the job service at one moment."""

    submitted: int
    rejected_queue_full: int
    finished: dict[str, int]  # by final state
    queue_length: int
    running: int
    groups: list[GroupStatus]
    queued_by_priority: dict[int, int] = {}  # jobs waiting, by priority
    batch_sizes: dict[int, int] = {}  # pipeline calls started, by how many jobs they ran
    requeued: int = 0  # runs cut short by a lost rank or host that were queued again
    output_writes_pending: int = 0  # the server's copies (and deletions) not yet on disk
    output_memory_bytes: int = 0  # outputs held in memory (past --output-memory-bytes only while written)
    idle_collections: int = 0  # Python's full collections once quiet (allocator.IdleCollector)
    python_blocks_idle: int = 0  # Python's blocks right after the last of them
    idle_collection_seconds: float = 0.0  # how long the last of them took
    hosts: list[HostStatus] = []
    models: list[ModelStatus] = []
