"""The job views as they travel over HTTP: the server builds them, the client reads them.

Defined once, here, in the distribution without torch; the server's ``records`` and
``views`` re-export them, so the OpenAPI document describes exactly what the client decodes.
"""

from __future__ import annotations

import enum
from typing import Annotated

import msgspec
from msgspec import Meta


class JobState(enum.StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    EXPIRED = "expired"  # not started within its max_queue_seconds: it never ran


TERMINAL = frozenset({JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED, JobState.EXPIRED})


class Adapter(msgspec.Struct, frozen=True):
    """An adapter (LoRA) the server offers (``GET /v1/loras``): a request applies it by
    ``name`` (``loras=``). ``source``: ``--lora``, ``--lora-dir`` or ``api`` (added at run
    time); ``rank``: read from its file; ``loaded_by``: the worker groups that hold it now."""

    name: str
    source: str
    rank: int | None = None
    loaded_by: list[int] = []


class AdapterList(msgspec.Struct, frozen=True):
    data: list[Adapter]
    object: str = "list"  # as OpenAI's lists say


class AppliedLora(msgspec.Struct, frozen=True):
    """An adapter (LoRA) a job applies, as its request named it."""

    name: str
    scale: float = 1.0


class Attempt(msgspec.Struct, frozen=True):
    """One run of a job: where and when, and the fault that cut it short (None: it was not).
    ``planned``: a drain stopped it (its host left on purpose); it does not count toward the
    server's ``--max-attempts``."""

    group: int
    host: str | None
    started_at: float
    ended_at: float | None = None
    fault: str | None = None
    planned: bool = False


class JobView(msgspec.Struct, omit_defaults=True, frozen=True):
    """A job as the /v1 API shows it (and ``para_attn_client`` reads it)."""

    id: Annotated[str, Meta(description="The job's id, a UUID")]
    state: Annotated[str, Meta(description="queued, running, succeeded, failed, cancelled or expired")]
    created_at: Annotated[float, Meta(description="When the server took the job (Unix time, seconds)")]
    started_at: Annotated[float | None, Meta(description="When a worker group started it")] = None
    finished_at: Annotated[float | None, Meta(description="When it ended")] = None
    group: Annotated[int | None, Meta(description="The worker group that runs or ran it")] = None
    host: Annotated[str | None, Meta(description="The host that group's ranks run on (a joined host's name)")] = None
    step: Annotated[int | None, Meta(description="The last step boundary it passed")] = None
    total: Annotated[
        int | None, Meta(description="Its total steps, when the predictor says (as progress events call it)")
    ] = None
    total_steps: Annotated[
        int | None, Meta(description="The same value as total: an alias kept for existing clients")
    ] = None
    queue_position: Annotated[int | None, Meta(description="While queued: the jobs ahead of it (0: next)")] = None
    error: Annotated[str | None, Meta(description="Why it failed or was cancelled, or why its output is gone")] = None
    file_type: Annotated[str | None, Meta(description="The output's file type (png, mp4, ...)")] = None
    output_path: Annotated[
        str | None, Meta(description="The output_path it was submitted with, under the server's output directory")
    ] = None
    output_url: Annotated[str | None, Meta(description="Once it succeeded: where to download its output")] = None
    loras: Annotated[
        list[AppliedLora] | None, Meta(description="The adapters (LoRA) it applies, in order, with their scales")
    ] = None
    priority: Annotated[int, Meta(description="Its priority: higher runs first, first come first among equals")] = 0
    batch_size: Annotated[
        int | None, Meta(description="Once started: how many jobs shared its pipeline call (itself included)")
    ] = None
    model: Annotated[str | None, Meta(description="The served model that runs it, on a server that serves several")] = (
        None
    )
    attempts: Annotated[
        list[Attempt] | None,
        Meta(description="When a run was cut short by a lost rank or host and the job ran again: every run, in order"),
    ] = None

    @property
    def done(self) -> bool:
        """True once the job ended: succeeded, failed, cancelled or expired."""
        return self.state in TERMINAL


class JobList(msgspec.Struct, frozen=True):
    """One page of jobs, newest first; pass ``last_id`` as ``after`` for the next page."""

    data: list[JobView]
    has_more: bool
    last_id: str | None
