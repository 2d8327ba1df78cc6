"""The resource API under ``/v1/jobs``: submit (and idempotent PUT), get, cancel, the output
bytes, the latest preview, and Server-Sent Events of a job's progress."""

from __future__ import annotations

import uuid
from collections.abc import AsyncGenerator
from typing import Annotated, Any

import msgspec
from litestar import Controller, Request, Response, get, post, put, route
from litestar.exceptions import NotFoundException
from litestar.params import FromPath, PathParameter, QueryParameter
from litestar.response import ServerSentEvent, ServerSentEventMessage

from para_attn_server.engine.registry import Job
from para_attn_server.errors import InputError
from para_attn_server.http.bodies import INPUTS, SUBMISSION, Inputs
from para_attn_server.http.dependencies import Service
from para_attn_server.http.errors import Conflict
from para_attn_server.http.openapi import BINARY, LOCATION, PREVIEW_STEP, RETRY_AFTER, Doc, errors, spec
from para_attn_server.http.outputs import SERVED, output_response
from para_attn_server.http.schemas import ServerSentJobEvent
from para_attn_server.records import JobState
from para_attn_server.views import JobList, JobView

WaitSeconds = Annotated[
    float, QueryParameter(ge=0, le=600, description="Block up to this many seconds for the job to end.")
]
JobUUID = Annotated[str, PathParameter(description="A UUID of your choice", schema_extra={"format": "uuid"})]
PageLimit = Annotated[int, QueryParameter(ge=1, le=100, description="At most this many jobs")]
PageCursor = Annotated[str | None, QueryParameter(description="A page's last_id: the jobs older than that job")]
STATES = [state.value for state in JobState]
# ``state`` is a name Litestar reserves for the app's state: the argument takes another name,
# so the handler checks it (Litestar's own message would name the argument, not ``state``).
StateFilter = Annotated[
    str | None, QueryParameter(name="state", description="Only the jobs in this state", schema_extra={"enum": STATES})
]
SUBMIT_ERRORS = errors(400, 413, 429, 503)
SUBMIT_HEADERS = {"429": {"Retry-After": RETRY_AFTER}, "503": {"Retry-After": RETRY_AFTER}}


class JobsController(Controller):
    path = "/v1/jobs"
    tags = ("jobs",)

    @post(
        "/",
        status_code=201,
        summary="Submit a job",
        description="With an Accept header naming a type other than JSON (application/octet-stream, image/png) "
        "and a job that succeeds within `wait`, the answer is the output bytes themselves, with an X-Job-Id header.",
        responses={201: spec(JobView, "Queued (or ended, with wait)"), **SUBMIT_ERRORS, **errors(410)},
        opt={
            "openapi": Doc(
                headers={**SUBMIT_HEADERS, "201": {"Location": LOCATION}},
                content={"201": {"*/*": BINARY}},
                inputs_body=True,
            ),
            "forms": True,  # http/policy.py: a multipart form is taken here
        },
        dependencies=SUBMISSION,
    )
    async def create_job(
        self, request: Request[Any, Any, Any], service: Service, inputs: Inputs, wait: WaitSeconds = 0
    ) -> Response[Any]:
        job, _ = await service.accept(inputs)
        await service.wait(job, wait)
        headers = {"Location": f"/v1/jobs/{job.id}"}
        if job.state is JobState.SUCCEEDED and wants_output(request):
            # Synchronous mode: one round trip from inputs to output bytes.
            return await output_response(service, job, status_code=201, headers={**headers, "X-Job-Id": job.id})
        return Response(service.view(job), status_code=201, headers=headers)

    @get(
        "/",
        summary="List jobs, newest first",
        description="Pages of at most `limit` jobs; pass a page's `last_id` as `after` for the next one.",
        responses=errors(400),
    )
    async def list_jobs(
        self, service: Service, job_state: StateFilter = None, limit: PageLimit = 20, after: PageCursor = None
    ) -> JobList:
        if job_state is not None and job_state not in STATES:
            raise InputError(f"must be one of {', '.join(STATES)}", "state")
        jobs, has_more = service.list_jobs(JobState(job_state) if job_state else None, limit, after)
        return JobList([service.view(job) for job in jobs], has_more, jobs[-1].id if jobs else None)

    # Litestar's own OPTIONS answer for a path remembers only the methods of the handler
    # registered first: answer it ourselves. A controller registers its handlers sorted by
    # name, so these names must sort before the other handlers of their paths.
    @route("/", http_method=["OPTIONS"], status_code=204, include_in_schema=False)
    async def allowed_collection_methods(self) -> Response[None]:
        return Response(None, status_code=204, headers={"Allow": "GET, OPTIONS, POST"})

    @route("/{job_id:str}", http_method=["OPTIONS"], status_code=204, include_in_schema=False)
    async def allowed_methods(self, job_id: FromPath[str]) -> Response[None]:
        return Response(None, status_code=204, headers={"Allow": "GET, OPTIONS, PUT"})

    @put(
        "/{job_id:str}",
        status_code=201,
        summary="Submit a job with a client-chosen id (idempotent)",
        description="201 created; 200 when a job with this id and the same inputs exists; 409 when it exists with "
        "other inputs.",
        responses={200: spec(JobView, "A job with this id and these inputs exists"), **errors(409), **SUBMIT_ERRORS},
        opt={"openapi": Doc(headers=SUBMIT_HEADERS)},
        dependencies=INPUTS,
    )
    async def put_job(
        self, service: Service, job_id: JobUUID, inputs: Inputs, wait: WaitSeconds = 0
    ) -> Response[JobView]:
        try:
            canonical = str(uuid.UUID(job_id))
        except ValueError:
            raise InputError("must be a UUID", "job_id") from None
        job, created = await service.accept(inputs, canonical)  # a taken id: IdConflictError, 409
        await service.wait(job, wait)
        return Response(service.view(job), status_code=201 if created else 200)

    @get("/{job_id:str}", summary="Get a job", responses=errors(400, 404))
    async def get_job(self, service: Service, job_id: FromPath[str], wait: WaitSeconds = 0) -> JobView:
        job = find(service, job_id)
        await service.wait(job, wait)
        return service.view(job)

    @post("/{job_id:str}/cancel", status_code=200, summary="Cancel a job", responses=errors(400, 404, 409))
    async def cancel_job(self, service: Service, job_id: FromPath[str]) -> JobView:
        job = find(service, job_id)
        if service.cancel(job_id) is None:
            raise Conflict(f"the job already ended ({job.state.value})")
        return service.view(job)

    @get(
        "/{job_id:str}/output",
        summary="Download a job's output",
        responses={
            200: spec(bytes, "The output, with its own content type (image/png, video/mp4, ...)", "*/*"),
            **errors(400, 404, 409, 410),
        },
    )
    async def job_output(self, service: Service, job_id: FromPath[str], wait: WaitSeconds = 0) -> Response[Any]:
        job = find(service, job_id)
        await service.wait(job, wait)
        if job.state is not JobState.SUCCEEDED:
            detail = f"the job is {job.state.value}"
            if job.record.error:
                detail += f": {job.record.error}"
            raise Conflict(detail)
        return await output_response(service, job)

    @get(
        "/{job_id:str}/preview",
        summary="The job's latest preview (JPEG)",
        description="A picture of the job's state at its latest preview step, at most 256 px on its long side, "
        "for a job whose predictor sends previews (for the diffusers predictors: `preview_every` > 0). Each new one "
        "is announced by a `preview` event. 404 until the first arrives.",
        responses={200: spec(bytes, "The latest preview", "image/jpeg"), **errors(400, 404)},
        opt={"openapi": Doc(headers={"200": {"X-Preview-Step": PREVIEW_STEP}})},
    )
    async def job_preview(self, service: Service, job_id: FromPath[str]) -> Response[bytes]:
        job = find(service, job_id)
        preview = service.previews.get(job.id)
        if preview is None:
            raise NotFoundException("the job has no preview (yet)")
        step, jpeg = preview
        # no-store: the same URL answers a newer picture at each preview step
        return Response(
            jpeg, media_type="image/jpeg", headers={"X-Preview-Step": str(step), "Cache-Control": "no-store", **SERVED}
        )

    @get(
        "/{job_id:str}/events",
        summary="Progress and state events (SSE)",
        responses={
            200: spec(ServerSentJobEvent, "Server-Sent Events until the job ends", "text/event-stream"),
            **errors(400, 404, 429),
        },
    )
    async def job_events(self, service: Service, job_id: FromPath[str]) -> ServerSentEvent:
        job = find(service, job_id)
        subscription = service.subscribe(job)  # a 429 now, before the stream's 200

        async def stream() -> AsyncGenerator[ServerSentEventMessage, None]:
            async with subscription as queue:
                yield ServerSentEventMessage(event="state", data=msgspec.json.encode(service.view(job)).decode())
                while not job.terminal or not queue.empty():
                    event, data = await queue.get()
                    yield ServerSentEventMessage(event=event, data=msgspec.json.encode(data).decode())

        return ServerSentEvent(stream())


def find(service: Service, job_id: str) -> Job:
    job = service.get(job_id)
    if job is None:
        raise NotFoundException("unknown request id")
    return job


def wants_output(request: Request[Any, Any, Any]) -> bool:
    """True when the client asked for the output itself (``Accept`` names a type other
    than JSON), as in ``Accept: application/octet-stream`` or ``image/png``."""
    accept_header = request.headers.get("accept", "")
    return bool(accept_header) and "json" not in accept_header and "*/*" not in accept_header
