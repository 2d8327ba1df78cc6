"""What the job service shows of itself: the server's status and a metrics snapshot."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import msgspec

from para_attn_server.plugin.manager import version
from para_attn_server.views import HostStatus, MetricsSnapshot, ModelStatus, RankRow, ServerStatus

if TYPE_CHECKING:
    from para_attn_server.engine.service import JobService


def server_status(service: JobService) -> ServerStatus:
    groups = [group.status() for group in service.groups]
    ranks: list[RankRow] = [row for group in groups for row in group.ranks]
    faults = [group.last_fault for group in service.groups if group.last_fault]
    return ServerStatus(
        status="server is running" if service.ready else ("restarting" if service.started else "starting"),
        ready=service.ready,
        version=version(),
        ranks=ranks,
        queue_length=len(service.queue),
        busy=bool(service.dispatcher.running()),
        restarts=service.counters["restarts"],
        last_fault=faults[-1] if faults else None,
        groups=groups,
        hosts=host_rows(service),
        models=model_rows(service),
    )


def host_rows(service: JobService) -> list[HostStatus]:
    """Every host the service knows, with the groups serving on it now and its runs."""
    now = time.monotonic()
    rows = []
    for name, host in service.hosts.items():
        groups = [group.index for group in service.groups if group.host == name]
        seen = None if host.last_seen_s is None else round(now - host.last_seen_s, 3)
        runs = service.runs_by_host.get(name, 0)
        rows.append(msgspec.structs.replace(host, groups=groups, runs=runs, last_seen_s=seen))
    return rows


def model_rows(service: JobService) -> list[ModelStatus]:
    """Every served model with its groups, its queued jobs and its counts."""
    queued: dict[str, int] = {}
    for job in service.queue:
        name = service.model_of(job)
        queued[name] = queued.get(name, 0) + 1
    return [
        ModelStatus(
            name=name,
            predictor=model.predictor_class.__name__,
            groups=[group.index for group in service.groups if group.model == name],
            queue_length=queued.get(name, 0),
            submitted=model.submitted,
            finished=dict(model.finished),
            layout=model.layout,
        )
        for name, model in service.models.items()
    ]


def quiet(service: JobService) -> int | None:
    """The jobs submitted so far, while none waits or runs and no output waits for the disk."""
    busy = service.queue or service.dispatcher.running_jobs() or service.store.pending()
    return None if busy else service.counters["submitted"]


def metrics_snapshot(service: JobService) -> MetricsSnapshot:
    return MetricsSnapshot(
        submitted=service.counters["submitted"],
        rejected_queue_full=service.counters["rejected_queue_full"],
        finished=dict(service.finished_by_state),
        queue_length=len(service.queue),
        running=len(service.dispatcher.running_jobs()),
        groups=[group.status() for group in service.groups],
        queued_by_priority=service.queue.by_priority(),
        batch_sizes=dict(service.batch_sizes),
        requeued=service.counters["requeued"],
        output_writes_pending=service.store.pending(),
        output_memory_bytes=service.outputs.size,
        idle_collections=service.collector.collections,
        python_blocks_idle=service.collector.python_blocks,
        idle_collection_seconds=service.collector.seconds,
        hosts=host_rows(service),
        models=model_rows(service),
    )
