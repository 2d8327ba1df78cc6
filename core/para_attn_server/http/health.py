"""Health probes and Prometheus metrics."""

from __future__ import annotations

import asyncio

from litestar import Controller, Response, get

from ..views import MetricsSnapshot
from .dependencies import Service
from .errors import NOT_READY_RETRY_AFTER
from .openapi import RETRY_AFTER, Doc, spec
from .schemas import Health


class HealthController(Controller):
    tags = ("health",)

    @get("/health/live", summary="Liveness", opt={"public": True})
    async def live(self) -> Health:
        return Health("live")

    @get(
        "/health/ready",
        summary="Readiness: a worker group can take jobs and the output directory can be written",
        responses={503: spec(Health, "Not ready")},
        opt={"openapi": Doc(headers={"503": {"Retry-After": RETRY_AFTER}})},
    )
    async def ready(self, service: Service) -> Response[Health]:
        reason = await asyncio.to_thread(service.not_ready_reason)  # it probes the disk
        if reason is None:
            return Response(Health("ready"))
        return Response(Health("not ready", reason), status_code=503, headers={"Retry-After": NOT_READY_RETRY_AFTER})

    @get(
        "/metrics",
        summary="Prometheus metrics",
        responses={200: spec(str, "Prometheus text format", "text/plain")},
    )
    async def metrics(self, service: Service) -> Response[str]:
        return Response(prometheus_text(service.metrics()), media_type="text/plain; version=0.0.4")


def prometheus_text(m: MetricsSnapshot) -> str:
    lines = [
        "# HELP para_attn_jobs_submitted_total Jobs accepted into the queue.",
        "# TYPE para_attn_jobs_submitted_total counter",
        f"para_attn_jobs_submitted_total {m.submitted}",
        "# HELP para_attn_jobs_rejected_total Jobs refused because the queue was full.",
        "# TYPE para_attn_jobs_rejected_total counter",
        f"para_attn_jobs_rejected_total {m.rejected_queue_full}",
        "# HELP para_attn_jobs_finished_total Jobs that ended, by final state.",
        "# TYPE para_attn_jobs_finished_total counter",
        *(f'para_attn_jobs_finished_total{{state="{s}"}} {n}' for s, n in sorted(m.finished.items())),
        "# HELP para_attn_queue_length Jobs waiting.",
        "# TYPE para_attn_queue_length gauge",
        f"para_attn_queue_length {m.queue_length}",
        "# HELP para_attn_group_ready 1 when every rank of the group finished setup.",
        "# TYPE para_attn_group_ready gauge",
        *(f'para_attn_group_ready{{group="{g.group}"}} {int(g.ready)}' for g in m.groups),
        "# HELP para_attn_group_restarts_total Worker group restarts after a fault.",
        "# TYPE para_attn_group_restarts_total counter",
        *(f'para_attn_group_restarts_total{{group="{g.group}"}} {g.restarts}' for g in m.groups),
    ]
    return "\n".join(lines) + "\n"
