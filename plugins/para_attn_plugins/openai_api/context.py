"""What every handler of the OpenAI routes is given (the dependency ``api``): the app's
jobs, the plugin's settings, the served models' names and what their fields map to, and
which of them a request's ``model`` chooses (``Chosen``)."""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass, field
from typing import Any, TypeAlias

import msgspec
import pybase64
from litestar import Request
from litestar.di import NamedDependency, Provide

from para_attn_server import InputError, Predictor
from para_attn_server.plugin import Job, JobRecord, Jobs, decode, file_of

from .adapters import unknown_model
from .mapping import ModelFields, input_error
from .settings import OpenAISettings

MODEL = "model"  # the request field naming the served model (inputs["model"]; absent: the first)


@dataclass(frozen=True)
class Chosen:
    """The served model a request's ``model`` chose."""

    name: str
    fields: ModelFields
    predictor: Predictor
    adapters: list[str]  # the adapters ``model`` may name with it: the first model's only
    default: bool  # the first model: its jobs' inputs name no model, as on a server of one


@dataclass
class OpenAIContext:
    jobs: Jobs
    settings: OpenAISettings
    result_ttl: float
    fields_of: dict[str, ModelFields]  # each served model's, by name; the first the default
    started: int = field(default_factory=lambda: int(time.time()))
    rng: random.Random = field(default_factory=random.Random)
    public_url: str | None = None  # --public-url

    @classmethod
    def of(
        cls, jobs: Jobs, settings: OpenAISettings, result_ttl: float, public_url: str | None = None
    ) -> OpenAIContext:
        fields_of = {name: ModelFields.of(jobs.schema_of(name)) for name in jobs.models}
        return cls(jobs, settings, result_ttl, fields_of, public_url=public_url)

    def output_url(self, request: Request[Any, Any, Any], job: Job) -> str:
        """Where a job's output is downloaded (``response_format=url``): under ``--public-url``,
        else at the address the request came in on (the bound host and port). Never under the
        client's ``Host``: a name any client, or a rebound page, chooses."""
        path = f"/v1/jobs/{job.id}/output"
        if self.public_url:
            return self.public_url.rstrip("/") + path
        server = request.scope.get("server")
        if server is None:  # not a TCP socket
            return path
        host, port = server
        host = f"[{host}]" if ":" in host else host
        return f"http://{host}{'' if port is None else f':{port}'}{path}"

    @property
    def served(self) -> str:
        """The first served model: what ``model`` names when left out, and the adapters' parent."""
        return next(iter(self.fields_of))

    @property
    def models(self) -> list[str]:
        return list(self.fields_of)

    @property
    def adapters(self) -> list[str]:
        """The adapters (LoRA) offered now, by name: models of their own, whose parent is the
        first served model (read at each request: ``/v1/loras`` adds and removes them). A
        served model's name is the model's, not an adapter's."""
        offered = self.jobs.adapters
        return [] if offered is None else [name for name in offered.names() if name not in self.fields_of]

    def choose(self, model: Any) -> Chosen:
        """The served model ``model`` (a request's field) names: one of ``models``, or an
        adapter (the first model, applying it); left out, the first. Anything else is an
        ``InputError`` naming ``model`` that lists them."""
        if model is not None and not isinstance(model, str):
            raise InputError("expected a string: a served model's name or an adapter's (GET /v1/models)", MODEL)
        name = self.served if model is None else model
        if name not in self.fields_of:
            adapters = self.adapters
            if name not in adapters:
                raise unknown_model(name, self.models, adapters)
            name = self.served
        default = name == self.served
        adapters = self.adapters if default else []
        return Chosen(name, self.fields_of[name], self.jobs.predictor_of(name), adapters, default)

    def model_of(self, record: JobRecord) -> str:
        """The served model a job ran on (its inputs name any but the first)."""
        named = record.inputs.get(MODEL)
        return named if isinstance(named, str) else self.served

    def checked(
        self, inputs: dict[str, Any], size: str | None, *, form: bool = False, model: Chosen | None = None
    ) -> dict[str, Any]:
        """``inputs`` checked against the schema of ``model`` (None: the first) as every
        route checks them (``form``: text values of a multipart form, converted to the
        fields' types), naming that model unless it is the first. A width or height that
        came from ``size`` is reported as ``size``."""
        if model is not None and not model.default:
            inputs = {**inputs, MODEL: model.name}
        schema = self.jobs.schema_of(None if model is None else model.name)
        try:
            if form:
                try:
                    typed = schema.convert(inputs)
                except msgspec.ValidationError as exc:
                    raise input_error(exc) from None
                schema.check_fields(typed)  # as a JSON body's are: a webhook's host, ...
                return typed
            return decode(self.jobs, msgspec.json.encode(inputs))
        except InputError as exc:
            if exc.field in ("width", "height") and size not in (None, "auto"):
                raise InputError(f"{exc} (from size {size!r})", "size") from None
            raise

    async def output(self, job: Job) -> bytes:
        """A succeeded job's output: from memory while it is held there, else its file,
        checked as every route checks it (OutputGoneError, a 410, when it is lost)."""
        held = self.jobs.held_output(job)
        if held is not None:
            return await asyncio.to_thread(held.raw) if held.base64 else held.data
        with await file_of(self.jobs, job) as file:
            return await asyncio.to_thread(file.read)

    async def output_base64(self, job: Job) -> str:
        """The output as base64 text; a predictor's own base64 passes through as it came."""
        held = self.jobs.held_output(job)
        if held is not None and held.base64:
            return held.data.decode("ascii")
        return pybase64.b64encode(await self.output(job)).decode("ascii")


Api: TypeAlias = NamedDependency[OpenAIContext]


def provide(context: OpenAIContext) -> dict[str, Provide]:
    """The routes' dependencies: handlers declare ``api: Api``."""

    def provide_context() -> OpenAIContext:
        return context

    return {"api": Provide(provide_context, sync_to_thread=False)}
