"""What handlers are given by dependency injection: the job service."""

from __future__ import annotations

from typing import TypeAlias

from litestar.di import NamedDependency, Provide

from para_attn_server.engine.service import JobService

Service: TypeAlias = NamedDependency[JobService]


def provide(service: JobService) -> dict[str, Provide]:
    """The app's dependencies: handlers declare ``service: Service``."""

    def provide_service() -> JobService:
        return service

    return {"service": Provide(provide_service, sync_to_thread=False)}
