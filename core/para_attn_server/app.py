"""The HTTP layer: routes only. Every decision is the job service's.

Two faces over one job service:

- the original server's endpoints, with the codes its clients rely on
  (``/generate``, ``/get_output/<id>``, ``/request_status/<id>``, ``/cancel``,
  ``/server_status``);
- a resource API under ``/v1/jobs`` (submit, idempotent PUT, get, cancel, binary output,
  Server-Sent Events), health probes and Prometheus metrics.

The request body type is derived from the predictor's ``predict`` signature, so Litestar
both validates it (400 naming the field) and documents it at ``/schema``.
"""

import asyncio
import base64
import hmac
import uuid
from collections.abc import AsyncGenerator, Callable
from pathlib import Path
from typing import Annotated, Any

import msgspec
from litestar import Litestar, Request, Response, get, post, put
from litestar.exceptions import HTTPException, NotFoundException, ValidationException
from litestar.openapi import OpenAPIConfig
from litestar.params import Parameter
from litestar.response import File, ServerSentEvent, ServerSentEventMessage
from litestar.types import ASGIApp, ControllerRouterHandler, Receive, Scope, Send

from .errors import InputError, NotReadyError, QueueFullError
from .jobs import Job, JobService, JobState, JobView
from .outputs import content_type
from .plugins import version

WaitSeconds = Annotated[
    float, Parameter(ge=0, le=600, description="Block up to this many seconds for the job to end.")
]
JSON = dict[str, Any]


class Submitted(msgspec.Struct):
    request_id: str


class Conflict(HTTPException):
    status_code = 409


def _error(status: int, message: str, headers: dict[str, str] | None = None, **extra: Any) -> Response[JSON]:
    return Response({"error": message, **extra}, status_code=status, headers=headers)


def _exception_handler(service: JobService) -> Callable[[Request[Any, Any, Any], Exception], Response[JSON]]:
    def handle(request: Request[Any, Any, Any], exc: Exception) -> Response[JSON]:
        if isinstance(exc, ValidationException):
            problems = exc.extra if isinstance(exc.extra, list) else []
            parts = []
            for problem in problems:
                key = problem.get("key") if isinstance(problem, dict) else None
                message = problem.get("message") if isinstance(problem, dict) else str(problem)
                parts.append(f"{key}: {message}" if key and key != "data" else str(message))
            return _error(400, "; ".join(parts) or str(exc.detail))
        if isinstance(exc, InputError):
            return _error(400, str(exc), field=exc.field)
        if isinstance(exc, QueueFullError):
            return _error(429, str(exc), headers={"Retry-After": str(service.retry_after())})
        if isinstance(exc, NotReadyError):
            return _error(503, str(exc), headers={"Retry-After": "5"})
        if isinstance(exc, HTTPException):
            return _error(exc.status_code, str(exc.detail), headers=exc.headers)
        request.logger.exception("unhandled error in %s %s", request.method, request.url.path)
        return _error(500, "internal server error")

    return handle


def api_key_middleware(api_key: str) -> Callable[[ASGIApp], ASGIApp]:
    """Require ``Authorization: Bearer KEY`` or ``X-API-Key: KEY`` on every route but
    ``/health/live`` (so a liveness probe needs no secret)."""
    expected = api_key.encode()
    body = msgspec.json.encode({"error": "missing or invalid API key"})

    def factory(app: ASGIApp) -> ASGIApp:
        async def middleware(scope: Scope, receive: Receive, send: Send) -> None:
            if scope["type"] == "http" and scope["path"] != "/health/live":
                supplied = b""
                for name, value in scope["headers"]:
                    if name == b"x-api-key":
                        supplied = value
                    elif name == b"authorization" and value[:7].lower() == b"bearer ":
                        supplied = value[7:]
                if not hmac.compare_digest(supplied, expected):
                    await send(
                        {
                            "type": "http.response.start",
                            "status": 401,
                            "headers": [
                                (b"content-type", b"application/json"),
                                (b"www-authenticate", b"Bearer"),
                                (b"content-length", str(len(body)).encode()),
                            ],
                        }
                    )
                    await send({"type": "http.response.body", "body": body})
                    return
            await app(scope, receive, send)

        return middleware

    return factory


def create_app(
    service: JobService,
    *,
    api_key: str | None = None,
    max_body_bytes: int = 10 * 1024 * 1024,
    debug: bool = False,
) -> Litestar:
    input_type = service.schema.type

    def find(job_id: str) -> Job:
        job = service.get(job_id)
        if job is None:
            raise NotFoundException("unknown request id")
        return job

    async def submit(
        request: Request[Any, Any, Any], data: msgspec.Struct, job_id: str | None = None
    ) -> tuple[Job, bool]:
        inputs = service.schema.to_inputs(data)
        if service.schema.accepts_extra:  # a predict(**kwargs) also gets the fields it does not name
            inputs = service.schema.with_extras(inputs, msgspec.json.decode(await request.body()))
        return service.submit(inputs, job_id)

    # ---- the original server's endpoints ----------------------------------------------

    async def generate(request: Request[Any, Any, Any], data: Any) -> Response[Submitted]:
        job, _ = await submit(request, data)
        return Response(Submitted(job.id), status_code=202)

    async def get_output(request_id: str) -> Response[Any]:
        job = service.get(request_id)
        if job is None:
            return _error(404, "unknown request id")
        if job.state in (JobState.QUEUED, JobState.RUNNING):
            body: JSON = {"status": job.state.value}
            if job.step is not None:
                body["progress"] = {"step": job.step, "total": job.total}
            return Response(body, status_code=202)
        if job.state is JobState.CANCELLED:
            return _error(404, "the request was cancelled", state="cancelled")
        if job.state is JobState.FAILED:
            return _error(500, job.error or "failed", state="failed")
        assert job.output_file is not None and job.file_type is not None
        if job.written_by_predictor:
            return Response({"output": job.output_path, "file_type": job.file_type}, status_code=200)
        if job.output_bytes is not None:
            body = _base64_body(job.output_bytes, job.file_type, job.output_path)
        else:
            body = await asyncio.to_thread(_base64_body, job.output_file, job.file_type, job.output_path)
        return Response(body, media_type="application/json", status_code=200)

    async def cancel(request: Request[Any, Any, Any]) -> Response[JSON]:
        body = await request.body()
        request_id: str | None = None
        if body.strip():
            try:
                request_id = msgspec.json.decode(body, type=CancelBody).request_id
            except msgspec.ValidationError as exc:
                raise InputError(str(exc)) from None
            except msgspec.DecodeError:
                raise InputError("body must be JSON like {\"request_id\": \"...\"} or empty") from None
        if request_id is None:
            running = service.running
            if running is None:
                return _error(404, "there is no request in flight to cancel")
            request_id = running.id
        return await cancel_one(request_id)

    async def cancel_by_id(request_id: str) -> Response[JSON]:
        return await cancel_one(request_id)

    async def cancel_one(request_id: str) -> Response[JSON]:
        job = service.cancel(request_id)
        if job is None:
            return _error(404, "no queued or running request with this id")
        # Give a running job the cancel grace to stop; the group restarts it past that.
        await service.wait(job, service.group.settings.cancel_grace + 1)
        if job.terminal:
            return Response({"status": f"request {request_id} {job.state.value}", "state": job.state.value})
        return Response({"status": f"request {request_id} cancelling", "state": job.state.value}, status_code=202)

    async def server_status() -> Response[JSON]:
        group = service.group
        body: JSON = {
            "status": "server is running" if group.ready else ("starting" if not service.started else "restarting"),
            "ready": group.ready,
            "version": version(),
            "ranks": group.rank_status(),
            "queue_length": len(service.queue),
            "busy": service.running is not None,
            "restarts": service.counters["restarts"],
            "last_fault": group.last_fault,
        }
        if group.ready:
            return Response(body)
        return Response(body, status_code=503, headers={"Retry-After": "5"})

    # ---- /v1 resource API -------------------------------------------------------------

    async def create_job(request: Request[Any, Any, Any], data: Any, wait: WaitSeconds = 0) -> Response[Any]:
        job, _ = await submit(request, data)
        await service.wait(job, wait)
        headers = {"Location": f"/v1/jobs/{job.id}"}
        if job.state is JobState.SUCCEEDED and wants_output(request):
            # Synchronous mode: one round trip from inputs to output bytes.
            return output_response(job, status_code=201, headers={**headers, "X-Job-Id": job.id})
        return Response(service.view(job), status_code=201, headers=headers)

    async def put_job(
        request: Request[Any, Any, Any], job_id: str, data: Any, wait: WaitSeconds = 0
    ) -> Response[JobView]:
        try:
            canonical = str(uuid.UUID(job_id))
        except ValueError:
            raise InputError("must be a UUID", "job_id") from None
        try:
            job, created = await submit(request, data, canonical)
        except InputError as exc:
            if exc.field == "id":
                raise Conflict(str(exc)) from None
            raise
        await service.wait(job, wait)
        return Response(service.view(job), status_code=201 if created else 200)

    async def get_job(job_id: str, wait: WaitSeconds = 0) -> JobView:
        job = find(job_id)
        await service.wait(job, wait)
        return service.view(job)

    async def cancel_job(job_id: str) -> JobView:
        job = find(job_id)
        if service.cancel(job_id) is None:
            raise Conflict(f"the job already ended ({job.state.value})")
        return service.view(job)

    async def job_output(job_id: str, wait: WaitSeconds = 0) -> Response[Any]:
        job = find(job_id)
        await service.wait(job, wait)
        if job.state is not JobState.SUCCEEDED or job.output_file is None or job.file_type is None:
            detail = f"the job is {job.state.value}"
            if job.error:
                detail += f": {job.error}"
            raise Conflict(detail)
        return output_response(job)

    def output_response(job: Job, status_code: int = 200, headers: dict[str, str] | None = None) -> Response[Any]:
        assert job.output_file is not None and job.file_type is not None
        if job.output_bytes is not None:
            # The same Content-Disposition that File sends for a large output.
            disposition = {"Content-Disposition": f'inline; filename="{job.id}.{job.file_type}"'}
            return Response(
                job.output_bytes,
                media_type=content_type(job.file_type),
                status_code=status_code,
                headers={**disposition, **(headers or {})},
            )
        return File(
            job.output_file,
            media_type=content_type(job.file_type),
            filename=f"{job.id}.{job.file_type}",
            content_disposition_type="inline",
            status_code=status_code,
            headers=headers,
        )

    async def job_events(job_id: str) -> ServerSentEvent:
        job = find(job_id)

        async def stream() -> AsyncGenerator[ServerSentEventMessage, None]:
            async with service.subscribe(job) as queue:
                yield ServerSentEventMessage(event="state", data=msgspec.json.encode(service.view(job)).decode())
                while not job.terminal or not queue.empty():
                    event, data = await queue.get()
                    yield ServerSentEventMessage(event=event, data=msgspec.json.encode(data).decode())

        return ServerSentEvent(stream())

    async def live() -> JSON:
        return {"status": "live"}

    async def ready() -> Response[JSON]:
        if service.group.ready:
            return Response({"status": "ready"})
        return Response({"status": "not ready"}, status_code=503, headers={"Retry-After": "5"})

    async def metrics() -> Response[str]:
        return Response(_prometheus(service), media_type="text/plain; version=0.0.4")

    # The body type exists only at runtime (from predict's signature): set it before
    # Litestar reads the handlers' signatures.
    for handler in (generate, create_job, put_job):
        handler.__annotations__["data"] = input_type

    original = {"tags": ["original API"]}
    v1 = {"tags": ["jobs"]}
    handlers: list[ControllerRouterHandler] = [
        post("/generate", status_code=202, summary="Submit a job (original API)", **original)(generate),
        get("/get_output/{request_id:str}", summary="Job result (original API)", **original)(get_output),
        post("/get_output/{request_id:str}", status_code=200, include_in_schema=False)(get_output),
        post("/request_status/{request_id:str}", status_code=200, summary="Alias of get_output", **original)(
            get_output
        ),
        post("/cancel", status_code=200, summary="Cancel the running job, or the one named", **original)(cancel),
        post("/cancel/{request_id:str}", status_code=200, summary="Cancel a job by id", **original)(cancel_by_id),
        get("/server_status", summary="Server and rank status", **original)(server_status),
        post("/server_status", status_code=200, include_in_schema=False)(server_status),
        post("/v1/jobs", status_code=201, summary="Submit a job", **v1)(create_job),
        put("/v1/jobs/{job_id:str}", summary="Submit a job with a client-chosen id (idempotent)", **v1)(put_job),
        get("/v1/jobs/{job_id:str}", summary="Get a job", **v1)(get_job),
        post("/v1/jobs/{job_id:str}/cancel", status_code=200, summary="Cancel a job", **v1)(cancel_job),
        get("/v1/jobs/{job_id:str}/output", summary="Download a job's output", **v1)(job_output),
        get("/v1/jobs/{job_id:str}/events", summary="Progress and state events (SSE)", **v1)(job_events),
        get("/health/live", summary="Liveness", tags=["health"])(live),
        get("/health/ready", summary="Readiness: every rank finished setup", tags=["health"])(ready),
        get("/metrics", summary="Prometheus metrics", tags=["health"])(metrics),
    ]
    return Litestar(
        handlers,
        middleware=[api_key_middleware(api_key)] if api_key else [],
        request_max_body_size=max_body_bytes,
        exception_handlers={Exception: _exception_handler(service)},
        openapi_config=OpenAPIConfig(title="para-attn-server", version=version()),
        debug=debug,
    )


class CancelBody(msgspec.Struct, forbid_unknown_fields=True):
    request_id: str | None = None


def wants_output(request: Request[Any, Any, Any]) -> bool:
    """True when the client asked for the output itself (``Accept`` names a type other
    than JSON), as in ``Accept: application/octet-stream`` or ``image/png``."""
    accept = request.headers.get("accept", "")
    return bool(accept) and "json" not in accept and "*/*" not in accept


def _base64_body(source: bytes | Path, file_type: str, output_path: str | None) -> bytes:
    """The original's JSON body, built as bytes: a JSON encoder would copy the base64 again."""
    encoded = base64.b64encode(source if isinstance(source, bytes) else source.read_bytes())
    extra = b"" if output_path is None else b',"output_path":' + msgspec.json.encode(output_path)
    return b'{"output":"' + encoded + b'","file_type":' + msgspec.json.encode(file_type) + extra + b"}"


def _prometheus(service: JobService) -> str:
    lines = [
        "# HELP para_attn_jobs_submitted_total Jobs accepted into the queue.",
        "# TYPE para_attn_jobs_submitted_total counter",
        f"para_attn_jobs_submitted_total {service.counters['submitted']}",
        "# HELP para_attn_jobs_rejected_total Jobs refused because the queue was full.",
        "# TYPE para_attn_jobs_rejected_total counter",
        f"para_attn_jobs_rejected_total {service.counters['rejected_queue_full']}",
        "# HELP para_attn_jobs_finished_total Jobs that ended, by final state.",
        "# TYPE para_attn_jobs_finished_total counter",
        *(f'para_attn_jobs_finished_total{{state="{s}"}} {n}' for s, n in sorted(service.finished_by_state.items())),
        "# HELP para_attn_queue_length Jobs waiting.",
        "# TYPE para_attn_queue_length gauge",
        f"para_attn_queue_length {len(service.queue)}",
        "# HELP para_attn_group_ready 1 when every rank finished setup.",
        "# TYPE para_attn_group_ready gauge",
        f"para_attn_group_ready {int(service.group.ready)}",
        "# HELP para_attn_group_restarts_total Worker group restarts after a fault.",
        "# TYPE para_attn_group_restarts_total counter",
        f"para_attn_group_restarts_total {service.counters['restarts']}",
    ]
    return "\n".join(lines) + "\n"
