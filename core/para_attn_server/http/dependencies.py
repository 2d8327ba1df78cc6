"""What handlers are given by dependency injection: the job service (the core's handlers),
and its face for plugins (``para_attn_server.plugin.Jobs``, what plugins' handlers get)."""

from __future__ import annotations

from typing import TypeAlias

from litestar.di import NamedDependency, Provide

from para_attn_server.engine.service import JobService
from para_attn_server.plugin.jobs import Jobs

Service: TypeAlias = NamedDependency[JobService]
JobsDependency: TypeAlias = NamedDependency[Jobs]


def provide(service: JobService, jobs: Jobs) -> dict[str, Provide]:
    """The app's dependencies: the core's handlers declare ``service: Service``, plugins'
    handlers ``jobs: JobsDependency``."""

    def provide_service() -> JobService:
        return service

    def provide_jobs() -> Jobs:
        return jobs

    return {
        "service": Provide(provide_service, sync_to_thread=False),
        "jobs": Provide(provide_jobs, sync_to_thread=False),
    }
