"""The core's HTTP helpers over the jobs face, for route plugins: a body decoded, an output
answered and a file opened exactly as the core's own routes do it, given ``Jobs`` where the
core's handlers have the job service. Loaded on first use (it imports Litestar)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, BinaryIO

from para_attn_server.http import bodies, outputs

if TYPE_CHECKING:
    from litestar import Response

    from para_attn_server.engine.registry import Job
    from para_attn_server.plugin.jobs import Jobs


def decode(jobs: Jobs, body: bytes) -> dict[str, Any]:
    """A JSON request body decoded strictly against the request schema, as ``POST /v1/jobs``
    decodes it: the inputs ``Jobs.accept`` takes. ``InputError`` (400) names the field."""
    return bodies.decode(jobs._service, body)


async def file_of(jobs: Jobs, job: Job) -> BinaryIO:
    """A succeeded job's output file, open and checked against the size and checksum it was
    written with; ``OutputGoneError`` (410, with the reason) when it cannot be served."""
    return await outputs.file_of(jobs._service, job)


async def output_response(
    jobs: Jobs, job: Job, status_code: int = 200, headers: dict[str, str] | None = None
) -> Response[Any]:
    """A succeeded job's output as ``GET /v1/jobs/{id}/output`` answers it: from memory, or
    streamed from its checked file, with its media type."""
    return await outputs.output_response(jobs._service, job, status_code, headers)
