"""What every handler of the OpenAI routes is given (the dependency ``api``): the app's
jobs, the plugin's settings, the served model's name and what its fields map to."""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass, field
from typing import Any, TypeAlias

import msgspec
import pybase64
from litestar.di import NamedDependency, Provide

from para_attn_server import InputError
from para_attn_server.plugin import Job, Jobs, decode, file_of

from .mapping import ModelFields, input_error
from .settings import OpenAISettings


@dataclass
class OpenAIContext:
    jobs: Jobs
    settings: OpenAISettings
    served: str  # the --model name: what GET /v1/models lists first and ``model`` names by default
    result_ttl: float
    fields: ModelFields
    started: int = field(default_factory=lambda: int(time.time()))
    rng: random.Random = field(default_factory=random.Random)

    @classmethod
    def of(cls, jobs: Jobs, settings: OpenAISettings, served: str, result_ttl: float) -> OpenAIContext:
        return cls(jobs, settings, served, result_ttl, ModelFields.of(jobs.schema))

    @property
    def adapters(self) -> list[str]:
        """The adapters (LoRA) offered now, by name: models of their own, whose parent is the
        served model (read at each request: ``/v1/loras`` adds and removes them)."""
        offered = self.jobs.adapters
        return [] if offered is None else [name for name in offered.names() if name != self.served]

    def checked(self, inputs: dict[str, Any], size: str | None, *, form: bool = False) -> dict[str, Any]:
        """``inputs`` checked against the predictor's schema as every route checks them
        (``form``: text values of a multipart form, converted to the fields' types). A width
        or height that came from ``size`` is reported as ``size``."""
        schema = self.jobs.schema
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
