"""``Jobs``: what route and listener plugins may do with the server's jobs.

``register_routes`` hands plugins this face, and their handlers get it as the dependency
``jobs`` (annotated ``JobsDependency``), instead of the job service: the service's queue,
registry, groups and counters stay the core's to change. It lives with the plugin face, not
in ``engine/``, because it is the plugins' side of the contract: what is here is what
``para_attn_server.plugin`` promises. It holds the service and imports the engine only for
its types, so importing the face loads no engine.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from para_attn_server.adapters import Adapters
    from para_attn_server.engine.observers import JobObserver
    from para_attn_server.engine.registry import Job
    from para_attn_server.engine.service import JobService
    from para_attn_server.predictor import Predictor
    from para_attn_server.records import JobState
    from para_attn_server.schema import InputSchema
    from para_attn_server.storage.outputs import Held
    from para_attn_server.views import JobView, MetricsSnapshot


class Jobs:
    """The server's jobs as a plugin sees them: submit, look up, wait for, cancel and
    forget jobs, read their outputs and views, and observe their events.

    Every job a method takes or returns is a ``Job`` handle: ``job.id``, ``job.state``,
    ``job.record`` (the immutable ``JobRecord`` as of now), ``job.done`` (an event set when
    it ended), ``job.restored`` (loaded from an earlier run's journal) and
    ``job.ended_at_start`` (ended by this start, before any listener could hear of it: a
    plugin that reports endings finds these once it starts). Submitting goes through the
    same checks and queue as every route's jobs.
    """

    def __init__(self, service: JobService) -> None:
        self._service = service  # plugin/routes.py looks behind the face; plugins may not

    # ---- the served model -------------------------------------------------------------

    @property
    def schema(self) -> InputSchema:
        """The request schema derived from the predictor's ``predict`` (with the fields
        plugins add): ``schema.type`` is its msgspec Struct."""
        return self._service.schema

    @property
    def adapters(self) -> Adapters | None:
        """The adapters (LoRA) requests may apply by name (``names()``), None when the
        predictor applies none. Read it; ``/v1/loras`` changes it."""
        return self._service.schema.adapters

    @property
    def predictor(self) -> Predictor:
        """The first model's predictor instance in the server process (never set up: no
        weights here)."""
        return self._service.predictor

    @property
    def models(self) -> list[str]:
        """The served models' names, the first the default: a request's ``model`` field
        (``inputs["model"]``) chooses one; ``schema``, ``predictor`` and ``adapters`` are
        the first's."""
        return list(self._service.models)

    def schema_of(self, model: str | None) -> InputSchema:
        """The request schema of the model ``model`` names (None: the first); ``InputError``
        naming the field ``model``, with the served names, for another."""
        return self._service.models.named(model).schema

    def predictor_of(self, model: str | None) -> Predictor:
        """The server process's predictor instance of that model (as ``schema_of``)."""
        return self._service.models.named(model).predictor

    # ---- jobs -------------------------------------------------------------------------

    async def accept(self, inputs: dict[str, Any], job_id: str | None = None) -> tuple[Job, bool]:
        """Queue a job of ``inputs`` (decoded and checked: see ``decode``); returns (job,
        created), answered once the job is on record. An existing ``job_id`` with the same
        inputs returns that job; with other inputs it is an ``InputError``. Raises
        ``QueueFullError`` (429), ``NotReadyError`` (503) and the predictor's ``InputError``
        (400) as every route does."""
        return await self._service.accept(inputs, job_id)

    def get(self, job_id: str) -> Job | None:
        """The job of this id, or None (never submitted, or forgotten)."""
        return self._service.get(job_id)

    def list_jobs(
        self, state: JobState | None = None, limit: int = 20, after: str | None = None
    ) -> tuple[list[Job], bool]:
        """A page of jobs newest first (only those in ``state``, when given),
        after the job ``after`` names; and whether more follow."""
        return self._service.list_jobs(state, limit, after)

    def find(self, accept: Callable[[Job], bool] | None = None) -> list[Job]:
        """Every job the server holds that ``accept`` takes (all when None), newest first."""
        held, _ = self._service.list_jobs(None, max(1, len(self._service.jobs)), None)
        return held if accept is None else [job for job in held if accept(job)]

    def cancel(self, job_id: str) -> Job | None:
        """Cancel a queued job at once, or ask the ranks to stop a running one; None when
        there is nothing to cancel (unknown or ended)."""
        return self._service.cancel(job_id)

    async def cancel_and_wait(self, job_id: str) -> Job | None:
        """``cancel``, then give a running job its group's cancel grace to stop."""
        return await self._service.cancel_and_wait(job_id)

    async def wait(self, job: Job, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for the job to end; True if it did."""
        return await self._service.wait(job, timeout)

    def forget(self, job: Job) -> None:
        """Forget an ended job now, as expiry would later (its record, output and journal
        entry): a client deleting it. ``ValueError`` for a job that has not ended."""
        if not job.terminal:
            raise ValueError(f"job {job.id} has not ended: cancel it and wait first")
        self._service.registry.forget(job)

    # ---- what they show ---------------------------------------------------------------

    def view(self, job: Job) -> JobView:
        """The job as ``GET /v1/jobs/{id}`` shows it (queue position included)."""
        return self._service.view(job)

    def held_output(self, job: Job) -> Held | None:
        """A succeeded job's output while it is held in memory (``held.data``: bytes, or
        base64 text when ``held.base64``; ``held.raw()``: the bytes), else None: then it
        is in its file (``file_of``)."""
        return self._service.held_output(job)

    def metrics(self) -> MetricsSnapshot:
        """The service's counters and gauges as they are now."""
        return self._service.metrics()

    def promise(self, job_id: str, what: str, owed: bool = True) -> None:
        """Record in the job's journaled record that this plugin owes its client ``what`` (a
        name of the plugin's own), or, ``owed`` False, that it no longer does. A server that
        died first holds the promise still when it starts again (``job.record.promises``):
        the webhooks plugin sends a final delivery cut short that way at the next start."""
        self._service.promise(job_id, what, owed)

    def add_listener(self, listener: JobObserver) -> Callable[[], None]:
        """Call ``listener(kind, record)`` at every job event from now on (``kind``:
        ``"state"`` or ``"progress"``; ignore kinds you do not know); returns what removes
        it. It runs on the event loop: do not block."""
        return self._service.add_listener(listener)
