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
import re
import uuid
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import msgspec
from litestar import Litestar, Request, Response, get, post, put, route
from litestar.enums import ScopeType
from litestar.exceptions import HTTPException, NotFoundException, ValidationException
from litestar.openapi import OpenAPIConfig, ResponseSpec
from litestar.openapi.spec import (
    Components,
    OpenAPIHeader,
    OpenAPIMediaType,
    OpenAPIResponse,
    OpenAPIType,
    Operation,
    RequestBody,
    Schema,
    SecurityScheme,
)
from litestar.params import Parameter
from litestar.response import File, ServerSentEvent, ServerSentEventMessage
from litestar.types import (
    ASGIApp,
    ControllerRouterHandler,
    HTTPResponseBodyEvent,
    HTTPResponseStartEvent,
    Receive,
    Scope,
    Send,
)

from .errors import InputError, NotReadyError, QueueFullError
from .jobs import Job, JobService, JobState, JobView
from .outputs import content_type
from .plugins import version

WaitSeconds = Annotated[float, Parameter(ge=0, le=600, description="Block up to this many seconds for the job to end.")]
JobUUID = Annotated[str, Parameter(description="A UUID of your choice", schema_extra={"format": "uuid"})]
JSON = dict[str, Any]

# ---- response bodies, as the OpenAPI document describes them ---------------------------------
# The handlers build some of these bodies as dicts or raw bytes (to skip a copy); these types
# are what /schema documents, and tests/reliability/test_fuzz.py checks every answer against it.


class Submitted(msgspec.Struct):
    request_id: str


class ErrorBody(msgspec.Struct, omit_defaults=True):
    """Every error answer: the message, the request field it concerns, the job's state."""

    error: str
    field: str | None = None
    state: str | None = None


class OutputBody(msgspec.Struct, omit_defaults=True):
    """A finished job (original API): the output as base64, or for a predictor that writes
    ``output_path`` itself, that path."""

    output: str
    file_type: str
    output_path: str | None = None


class ProgressBody(msgspec.Struct):
    step: int
    total: int | None


class PendingBody(msgspec.Struct, omit_defaults=True):
    status: Literal["queued", "running"]
    progress: ProgressBody | None = None


class CancelResult(msgspec.Struct):
    status: str
    state: str


class RankRow(msgspec.Struct):
    rank: int
    pid: int | None
    hostname: str | None
    state: str
    last_heartbeat_s: float | None


class ServerStatus(msgspec.Struct):
    status: str
    ready: bool
    version: str
    ranks: list[RankRow]
    queue_length: int
    busy: bool
    restarts: int
    last_fault: str | None


class Health(msgspec.Struct):
    status: str


class Event(msgspec.Struct):
    """One Server-Sent Event: ``state`` carries the job (as /v1/jobs/{id} shows it),
    ``progress`` ``{"step": k, "total": n}``, both as JSON text."""

    event: Literal["state", "progress"]
    data: str


def _spec(container: Any, description: str, media_type: str = "application/json") -> ResponseSpec:
    return ResponseSpec(container, generate_examples=False, description=description, media_type=media_type)


def _errors(*codes: int) -> dict[int, ResponseSpec]:
    return {code: _spec(ErrorBody, ERROR_DESCRIPTIONS[code]) for code in codes}


ERROR_DESCRIPTIONS = {
    400: "A field, parameter or body is invalid; the message names it",
    401: "Missing or wrong API key",
    404: "Unknown id (ids are forgotten --result-ttl seconds after the job ended)",
    409: "The job is not in a state that allows this",
    413: "The request body is larger than --max-body-bytes",
    429: "The queue is full; retry after Retry-After seconds",
    500: "The job failed; the message says why",
    503: "Not ready (first setup still running) or draining; retry after Retry-After seconds",
}
RETRY_AFTER = OpenAPIHeader(
    schema=Schema(type=OpenAPIType.INTEGER, minimum=1), required=True, description="Seconds to wait before retrying"
)
LOCATION = OpenAPIHeader(schema=Schema(type=OpenAPIType.STRING), required=True, description="The job's URL")
BINARY = Schema(type=OpenAPIType.STRING, content_media_type="application/octet-stream")


def _operation(
    *,
    headers: dict[str, dict[str, OpenAPIHeader]] | None = None,
    content: dict[str, dict[str, Schema]] | None = None,
    request_body: RequestBody | None = None,
    public: bool = False,
) -> type[Operation]:
    """An Operation class that adds to Litestar's generated one what its route decorator
    cannot say: headers of error responses, a second media type of one response, a body the
    handler reads itself, and (``public``) that the route needs no API key."""

    @dataclass
    class Patched(Operation):
        def __post_init__(self) -> None:
            responses = {
                code: response
                for code, response in (self.responses or {}).items()
                if isinstance(response, OpenAPIResponse)
            }
            for code, named in (headers or {}).items():
                if code in responses:
                    responses[code].headers = {**(responses[code].headers or {}), **named}
            for code, media in (content or {}).items():
                if code in responses:
                    extra = {name: OpenAPIMediaType(schema=schema) for name, schema in media.items()}
                    responses[code].content = {**(responses[code].content or {}), **extra}
            if request_body is not None:
                self.request_body = request_body
            if public:
                self.security = []

    return Patched


class Conflict(HTTPException):
    status_code = 409


def _error(status: int, message: str, headers: dict[str, str] | None = None, **extra: Any) -> Response[JSON]:
    extra = {key: value for key, value in extra.items() if value is not None}
    return Response({"error": message, **extra}, status_code=status, headers=headers)


# How msgspec names a field of the body that is unknown or missing, in the message itself.
NAMED_FIELD = re.compile(r"(?:unknown|required) field `([^`]+)`")


def _exception_handler(service: JobService) -> Callable[[Request[Any, Any, Any], Exception], Response[JSON]]:
    def handle(request: Request[Any, Any, Any], exc: Exception) -> Response[JSON]:
        if isinstance(exc, ValidationException):
            problems = exc.extra if isinstance(exc.extra, list) else []
            parts, keys = [], set()
            for problem in problems:
                key = problem.get("key") if isinstance(problem, dict) else None
                message = problem.get("message") if isinstance(problem, dict) else str(problem)
                if key == "data" and message == "'data'":
                    message = "a JSON object is required as the request body"  # no body at all
                parts.append(f"{key}: {message}" if key and key != "data" else str(message))
                if key in (None, "data"):
                    named = NAMED_FIELD.search(str(message))
                    key = named[1] if named else None
                keys.add(key)
            # "field" when one request field is at fault, as InputError answers say it.
            field = keys.pop() if len(keys) == 1 else None
            return _error(400, "; ".join(parts) or str(exc.detail), field=field)
        if isinstance(exc, InputError):
            return _error(400, str(exc), field=exc.field)
        if isinstance(exc, QueueFullError):
            return _error(429, str(exc), headers={"Retry-After": str(service.retry_after())})
        if isinstance(exc, NotReadyError):
            return _error(503, str(exc), headers={"Retry-After": "5"})
        if isinstance(exc, HTTPException):
            return _error(exc.status_code, str(exc.detail), headers=exc.headers)
        # The JSON decoder lets these two through; both are the client's bytes.
        if isinstance(exc, UnicodeDecodeError):
            return _error(400, "the request body is not valid UTF-8")
        if isinstance(exc, RecursionError) and "deserializing" in str(exc):
            return _error(400, "the request body is nested too deeply")
        request.logger.exception("unhandled error in %s %s", request.method, request.url.path)
        return _error(500, "internal server error")

    return handle


def api_key_middleware(api_key: str) -> Callable[[ASGIApp], ASGIApp]:
    """Require ``Authorization: Bearer KEY`` or ``X-API-Key: KEY`` on every route but
    ``/health/live`` (so a liveness probe needs no secret) and handlers whose ``opt`` says
    ``"public": True`` (a plugin's web page: files that hold no secret, and that a browser
    must load before it can ask for the key). Every key a request presents must be right:
    a wrong one is refused even beside a right one."""
    expected = api_key.encode()
    body = msgspec.json.encode({"error": "missing or invalid API key"})

    def factory(app: ASGIApp) -> ASGIApp:
        async def middleware(scope: Scope, receive: Receive, send: Send) -> None:
            # Litestar runs app middleware per route, so the matched handler is in the scope.
            if (
                scope["type"] == ScopeType.HTTP
                and scope["path"] != "/health/live"
                and scope["route_handler"].opt.get("public") is not True
            ):
                supplied = []
                for name, value in scope["headers"]:
                    if name == b"x-api-key":
                        supplied.append(value)
                    elif name == b"authorization" and value[:7].lower() == b"bearer ":
                        supplied.append(value[7:])
                # compare_digest on every key: the time taken does not tell which was wrong.
                right = [hmac.compare_digest(key, expected) for key in supplied]
                if not right or not all(right):
                    # Plain ASGI events: an early refusal needs no Response object.
                    start: HTTPResponseStartEvent = {
                        "type": "http.response.start",
                        "status": 401,
                        "headers": [
                            (b"content-type", b"application/json"),
                            (b"www-authenticate", b"Bearer"),
                            (b"content-length", str(len(body)).encode()),
                        ],
                    }
                    await send(start)
                    end: HTTPResponseBodyEvent = {"type": "http.response.body", "body": body, "more_body": False}
                    await send(end)
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
        # Litestar decoded ``data`` leniently ("3" for an int, 0 for a bool); decode the
        # same bytes again strictly, so the body has exactly the types /schema documents.
        # (A predict(**kwargs) also gets the fields it does not name.)
        body = await request.body()
        try:
            inputs = service.schema.decode_json(body)
        except msgspec.ValidationError as exc:
            try:  # JSON Schema counts 3.0 as an integer, as the document's readers will
                inputs = service.schema.decode_json(msgspec.json.encode(_integral(msgspec.json.decode(body))))
            except msgspec.ValidationError:
                message, _, where = str(exc).partition(" - at `$.")
                raise InputError(message, where.rstrip("`").split(".")[0].split("[")[0] or None) from None
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
        assert job.output_file is not None
        assert job.file_type is not None
        if job.written_by_predictor:
            return Response({"output": job.output_path, "file_type": job.file_type}, status_code=200)
        if job.output_bytes is not None:
            encoded = _base64_body(job.output_bytes, job.file_type, job.output_path)
        else:
            encoded = await asyncio.to_thread(_base64_body, job.output_file, job.file_type, job.output_path)
        return Response(encoded, media_type="application/json", status_code=200)

    async def cancel(request: Request[Any, Any, Any]) -> Response[JSON]:
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
        request: Request[Any, Any, Any], job_id: JobUUID, data: Any, wait: WaitSeconds = 0
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
        assert job.output_file is not None
        assert job.file_type is not None
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
            chunk_size=8 * 1024 * 1024,  # each chunk is a thread hop: few, large ones
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

    async def job_options(job_id: str) -> Response[None]:
        return Response(None, status_code=204, headers={"Allow": "GET, OPTIONS, PUT"})

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

    original, v1, health = ["original API"], ["jobs"], ["health"]
    # Every route but /health/live answers 401 without the key, when one is set.
    auth = _errors(401) if api_key else {}
    submit_errors = {**_errors(400, 413, 429, 503), **auth}
    submit_headers = {"429": {"Retry-After": RETRY_AFTER}, "503": {"Retry-After": RETRY_AFTER}}
    result_responses = {
        200: _spec(OutputBody, "The output as base64 (or the path the predictor wrote)"),
        202: _spec(PendingBody, "Queued or running"),
        **_errors(400, 404, 500),
        **auth,
    }
    cancel_responses = {
        200: _spec(CancelResult, "Cancelled (it stopped)"),
        202: _spec(CancelResult, "Still stopping after --cancel-grace seconds; the group restarts to stop it"),
        **_errors(400, 404),
        **auth,
    }
    handlers: list[ControllerRouterHandler] = [
        post(
            "/generate",
            status_code=202,
            summary="Submit a job (original API)",
            tags=original,
            responses={202: _spec(Submitted, "Queued"), **submit_errors},
            operation_class=_operation(headers=submit_headers),
        )(generate),
        route(
            "/get_output/{request_id:str}",
            http_method=["GET", "POST"],
            status_code=200,
            summary="Job result (original API)",
            tags=original,
            responses=result_responses,
        )(get_output),
        post(
            "/request_status/{request_id:str}",
            status_code=200,
            summary="Alias of get_output",
            tags=original,
            responses=result_responses,
        )(get_output),
        post(
            "/cancel",
            status_code=200,
            summary="Cancel the running job, or the one named",
            description='No body: cancels the running job. A body {"request_id": ...}: cancels that job, queued '
            "or running.",
            tags=original,
            responses={**cancel_responses, **_errors(400)},
            operation_class=_operation(request_body=CANCEL_BODY),
        )(cancel),
        post(
            "/cancel/{request_id:str}",
            status_code=200,
            summary="Cancel a job by id",
            tags=original,
            responses=cancel_responses,
        )(cancel_by_id),
        route(
            "/server_status",
            http_method=["GET", "POST"],
            status_code=200,
            summary="Server and rank status",
            tags=original,
            responses={
                200: _spec(ServerStatus, "Ready"),
                503: _spec(ServerStatus, "Starting or restarting"),
                **auth,
            },
            operation_class=_operation(headers={"503": {"Retry-After": RETRY_AFTER}}),
        )(server_status),
        post(
            "/v1/jobs",
            status_code=201,
            summary="Submit a job",
            description="With an Accept header naming a type other than JSON (application/octet-stream, image/png) "
            "and a job that succeeds within `wait`, the answer is the output bytes themselves, with an X-Job-Id "
            "header.",
            tags=v1,
            responses={201: _spec(JobView, "Queued (or ended, with wait)"), **submit_errors},
            operation_class=_operation(
                headers={**submit_headers, "201": {"Location": LOCATION}}, content={"201": {"*/*": BINARY}}
            ),
        )(create_job),
        # Litestar's own OPTIONS answer for a path remembers only the first handler's
        # methods (here PUT): answer it ourselves, before either handler is registered.
        route("/v1/jobs/{job_id:str}", http_method=["OPTIONS"], status_code=204, include_in_schema=False)(job_options),
        put(
            "/v1/jobs/{job_id:str}",
            status_code=201,
            summary="Submit a job with a client-chosen id (idempotent)",
            description="201 created; 200 when a job with this id and the same inputs exists; 409 when it exists "
            "with other inputs.",
            tags=v1,
            responses={
                200: _spec(JobView, "A job with this id and these inputs exists"),
                **_errors(409),
                **submit_errors,
            },
            operation_class=_operation(headers=submit_headers),
        )(put_job),
        get(
            "/v1/jobs/{job_id:str}",
            summary="Get a job",
            tags=v1,
            responses={**_errors(400, 404), **auth},
        )(get_job),
        post(
            "/v1/jobs/{job_id:str}/cancel",
            status_code=200,
            summary="Cancel a job",
            tags=v1,
            responses={**_errors(400, 404, 409), **auth},
        )(cancel_job),
        get(
            "/v1/jobs/{job_id:str}/output",
            summary="Download a job's output",
            tags=v1,
            responses={
                200: _spec(bytes, "The output, with its own content type (image/png, video/mp4, ...)", "*/*"),
                **_errors(400, 404, 409),
                **auth,
            },
        )(job_output),
        get(
            "/v1/jobs/{job_id:str}/events",
            summary="Progress and state events (SSE)",
            tags=v1,
            responses={
                200: _spec(Event, "Server-Sent Events until the job ends", "text/event-stream"),
                **_errors(400, 404),
                **auth,
            },
        )(job_events),
        get("/health/live", summary="Liveness", tags=health, operation_class=_operation(public=True))(live),
        get(
            "/health/ready",
            summary="Readiness: every rank finished setup",
            tags=health,
            responses={503: _spec(Health, "Not ready"), **auth},
            operation_class=_operation(headers={"503": {"Retry-After": RETRY_AFTER}}),
        )(ready),
        get(
            "/metrics",
            summary="Prometheus metrics",
            tags=health,
            responses={200: _spec(str, "Prometheus text format", "text/plain"), **auth},
        )(metrics),
        *service.plugins.routes(),
    ]
    openapi = OpenAPIConfig(title="para-attn-server", version=version())
    if api_key:
        openapi = OpenAPIConfig(
            title="para-attn-server",
            version=version(),
            components=Components(
                security_schemes={
                    "bearer": SecurityScheme(type="http", scheme="bearer", description="Authorization: Bearer KEY"),
                    "apiKey": SecurityScheme(type="apiKey", name="X-API-Key", security_scheme_in="header"),
                }
            ),
            security=[{"bearer": []}, {"apiKey": []}],
        )
    app = Litestar(
        handlers,
        middleware=[api_key_middleware(api_key)] if api_key else [],
        request_max_body_size=max_body_bytes,
        exception_handlers={Exception: _exception_handler(service)},
        openapi_config=openapi,
        debug=debug,
    )
    if not service.schema.accepts_extra:
        # The body decoder refuses unknown fields; say so in the document too.
        components = app.openapi_schema.components.schemas or {}
        body = components.get(input_type.__name__)
        if body is not None:
            body.additional_properties = False
    return app


class CancelBody(msgspec.Struct, forbid_unknown_fields=True):
    request_id: str | None = None


CANCEL_BODY = RequestBody(
    content={
        "application/json": OpenAPIMediaType(
            schema=Schema(
                type=OpenAPIType.OBJECT,
                properties={
                    "request_id": Schema(one_of=[Schema(type=OpenAPIType.STRING), Schema(type=OpenAPIType.NULL)])
                },
                additional_properties=False,
            )
        )
    },
    required=False,
    description="Optional: the job to cancel",
)


def _integral(value: Any) -> Any:
    """``value`` with every float that has no fractional part as an int."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {key: _integral(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_integral(item) for item in value]
    return value


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
