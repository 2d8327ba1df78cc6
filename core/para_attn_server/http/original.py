"""The original server's endpoints, with the codes its clients rely on: ``/generate``,
``/get_output/<id>``, ``/request_status/<id>``, ``/cancel``, ``/server_status``."""

from __future__ import annotations

from typing import Any

import msgspec
from litestar import Controller, Request, Response, post, route
from litestar.openapi.spec import OpenAPIMediaType, RequestBody
from litestar.params import FromPath

from para_attn_server.errors import InputError
from para_attn_server.http.bodies import INPUTS, Inputs
from para_attn_server.http.dependencies import Service
from para_attn_server.http.errors import NOT_READY_RETRY_AFTER, error
from para_attn_server.http.openapi import RETRY_AFTER, Doc, errors, spec, struct_schema
from para_attn_server.http.outputs import base64_response
from para_attn_server.http.schemas import CancelBody, CancelResult, OutputBody, PendingBody, ProgressBody, Submitted
from para_attn_server.records import JobState
from para_attn_server.views import ServerStatus

SUBMIT_ERRORS = errors(400, 413, 429, 503)
SUBMIT_HEADERS = {"429": {"Retry-After": RETRY_AFTER}, "503": {"Retry-After": RETRY_AFTER}}
RESULT_RESPONSES = {
    200: spec(OutputBody, "The output as base64 (or the path the predictor wrote)"),
    202: spec(PendingBody, "Queued or running"),
    **errors(400, 404, 410, 500),
}
CANCEL_RESPONSES = {
    200: spec(CancelResult, "Cancelled (it stopped)"),
    202: spec(CancelResult, "Still stopping after --cancel-grace seconds; the group restarts to stop it"),
    **errors(400, 404),
}
CANCEL_REQUEST = RequestBody(
    content={"application/json": OpenAPIMediaType(schema=struct_schema(CancelBody))},
    required=False,
    description="Optional: the job to cancel",
)


class OriginalController(Controller):
    tags = ("original API",)

    @post(
        "/generate",
        status_code=202,
        summary="Submit a job (original API)",
        responses={202: spec(Submitted, "Queued"), **SUBMIT_ERRORS},
        opt={"openapi": Doc(headers=SUBMIT_HEADERS)},
        dependencies=INPUTS,
    )
    async def generate(self, service: Service, inputs: Inputs) -> Response[Submitted]:
        job, _ = await service.accept(inputs)
        return Response(Submitted(job.id), status_code=202)

    @route(
        "/get_output/{request_id:str}",
        http_method=["GET", "POST"],
        status_code=200,
        summary="Job result (original API)",
        responses=RESULT_RESPONSES,
    )
    async def get_output(self, service: Service, request_id: FromPath[str]) -> Response[Any]:
        return await result(service, request_id)

    @post(
        "/request_status/{request_id:str}", status_code=200, summary="Alias of get_output", responses=RESULT_RESPONSES
    )
    async def request_status(self, service: Service, request_id: FromPath[str]) -> Response[Any]:
        return await result(service, request_id)

    @post(
        "/cancel",
        status_code=200,
        summary="Cancel the running job, or the one named",
        description='No body: cancels the running job. A body {"request_id": ...}: cancels that job, queued or '
        "running.",
        responses=CANCEL_RESPONSES,
        opt={"openapi": Doc(request_body=CANCEL_REQUEST)},
    )
    async def cancel(self, request: Request[Any, Any, Any], service: Service) -> Response[Any]:
        body = await request.body()
        request_id: str | None = None
        if body.strip():
            try:
                request_id = msgspec.json.decode(body, type=CancelBody).request_id
            except msgspec.ValidationError as exc:
                raise InputError(str(exc)) from None
            except msgspec.DecodeError:
                raise InputError('body must be JSON like {"request_id": "..."} or empty') from None
        if request_id is None:
            running = service.oldest_running()
            if running is None:
                return error(404, "there is no request in flight to cancel")
            request_id = running.id
        return await cancel_one(service, request_id)

    @post("/cancel/{request_id:str}", status_code=200, summary="Cancel a job by id", responses=CANCEL_RESPONSES)
    async def cancel_by_id(self, service: Service, request_id: FromPath[str]) -> Response[Any]:
        return await cancel_one(service, request_id)

    @route(
        "/server_status",
        http_method=["GET", "POST"],
        status_code=200,
        summary="Server, group and rank status",
        responses={200: spec(ServerStatus, "Ready"), 503: spec(ServerStatus, "Starting or restarting")},
        opt={"openapi": Doc(headers={"503": {"Retry-After": RETRY_AFTER}})},
    )
    async def server_status(self, service: Service) -> Response[ServerStatus]:
        status = service.status()
        if status.ready:
            return Response(status)
        return Response(status, status_code=503, headers={"Retry-After": NOT_READY_RETRY_AFTER})


async def result(service: Service, request_id: str) -> Response[Any]:
    job = service.get(request_id)
    if job is None:
        return error(404, "unknown request id")
    # A poll of an unfinished job is held briefly for it to end: a client polling every
    # millisecond gets its answer in one round trip, not hundreds that each wake the server.
    await service.wait(job, service.settings.result_poll_wait)
    record = job.record
    if record.state in (JobState.QUEUED, JobState.RUNNING):
        progress = None if record.step is None else ProgressBody(record.step, record.total)
        return Response(PendingBody(record.state.value, progress), status_code=202)  # type: ignore[arg-type]
    if record.state is JobState.CANCELLED:
        return error(404, "the request was cancelled", state="cancelled")
    if record.state in (JobState.FAILED, JobState.EXPIRED):  # expired: never started, a failure to this API
        return error(500, record.error or "failed", state="failed")
    assert record.file_type is not None
    if record.reply_with_path:
        assert record.output_path is not None
        return Response(OutputBody(record.output_path, record.file_type))
    return await base64_response(service, job)


async def cancel_one(service: Service, request_id: str) -> Response[Any]:
    job = await service.cancel_and_wait(request_id)
    if job is None:
        return error(404, "no queued or running request with this id")
    state = job.state.value
    if job.terminal:
        return Response(CancelResult(f"request {request_id} {state}", state))
    return Response(CancelResult(f"request {request_id} cancelling", state), status_code=202)
