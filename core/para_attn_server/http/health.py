"""Health probes (``/metrics`` is the ``metrics`` plugin's: para_attn_plugins.metrics)."""

from __future__ import annotations

import asyncio

from litestar import Controller, Response, get

from para_attn_server.http.dependencies import Service
from para_attn_server.http.errors import NOT_READY_RETRY_AFTER
from para_attn_server.http.openapi import RETRY_AFTER, Doc, spec
from para_attn_server.http.schemas import Health


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
