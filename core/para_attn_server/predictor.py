"""The predictor contract: what a predictor author writes against.

A predictor is a class with three methods::

    class MyPredictor(Predictor):
        def setup(self, context: RankContext) -> None: ...     # once per rank
        def validate(self, inputs: dict[str, Any]) -> None: ... # server process, optional
        def predict(self, prompt: str, steps: Annotated[int, Meta(ge=1, le=50)] = 4) -> Output | None: ...

``predict``'s parameters *are* the request schema: their names, type hints, defaults and
``msgspec.Meta`` limits become the JSON body that ``/generate`` and ``/v1/jobs`` accept and
the OpenAPI document shows. ``predict`` runs on every rank; rank 0 returns the ``Output``.
Inside ``predict``, ``current_job()`` gives the job's context: call ``job.step(k, total)``
at every step boundary on every rank (or pass ``job.diffusers_callback`` as a diffusers
pipeline's ``callback_on_step_end``) to report progress and to stop all ranks together at
the same step when the job is cancelled. ``job.preview(image)`` publishes a picture of the
state at the current step (rank 0 only; no collective). A predictor whose class says
``supports_loras = True`` gets the server's ``loras`` request field: ``job.loras`` holds the
adapters the job applies (name, scale, path), the same on every rank.

Batches: a predictor may run several compatible jobs as one pipeline call. ``batch_key``
(server process, on a job's inputs as ``validate`` gets them) says which may share one:
queued jobs whose keys are equal and not None may be handed to one group together, and
every rank then calls ``predict_batch`` once with each job's ``predict`` keyword arguments,
leader first; rank 0 returns one ``Output`` (or None: that job failed) per job, in order.
Inside it ``current_job()`` is the batch's: ``job.batch`` holds every job's arguments,
``job.job_ids`` their ids, ``job.step`` is one boundary for the whole batch (a cancel of the
batch stops it all), ``job.preview(image, index=i)`` shows job ``i``'s picture, and
``job.loras`` are the batch's adapters: the key must tell apart jobs with other adapters.
The default key, None, never batches a job.

Classes that do not derive from ``Predictor`` are predictors written for the original
server; ``legacy.as_predictor`` wraps them in a ``Predictor`` when they are loaded, so the
rest of the server only ever sees this contract.
"""

from __future__ import annotations

import contextvars
import io
from collections.abc import Callable, Hashable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import msgspec

from para_attn_server import b64
from para_attn_server.errors import JobCancelled

if TYPE_CHECKING:
    import torch
    from PIL.Image import Image

    from para_attn_server.adapters import AdapterReport, Lora
    from para_attn_server.lorafiles import AdapterFit

#: Pixels on the long side of a preview at most (``JobContext.preview``): a predictor that
#: shrinks its picture on the device itself shrinks it to this.
PREVIEW_MAX_SIDE = 256


class Output(msgspec.Struct, frozen=True):
    """A finished job's payload: its bytes and a file type such as ``png`` or ``mp4``
    (letters and digits only: it names files and goes into HTTP headers).

    With ``base64`` True, ``data`` is the output's base64 text (ASCII): the original API
    answers it as it is, and the server decodes it only where it needs the bytes (its own
    copy, a binary download), so a predictor that already has base64 pays nothing twice.
    """

    data: bytes
    file_type: str
    base64: bool = False

    def __post_init__(self) -> None:
        if not self.file_type.isascii() or not self.file_type.isalnum():
            raise ValueError(f"an output's file type must be letters and digits, not {self.file_type!r}")

    @classmethod
    def from_base64(cls, text: str | bytes, file_type: str) -> Output:
        """An output given as base64 text, kept as text; checked by a strict decode whose
        bytes are dropped: faster than a scan of its alphabet (``benchmarks --only micro``)."""
        try:
            data = text.encode("ascii") if isinstance(text, str) else bytes(text)
            b64.decode(data)
        except ValueError as exc:  # binascii.Error and UnicodeEncodeError are ValueErrors
            raise ValueError(f"not base64: {exc}") from None
        return cls(data, file_type, base64=True)

    def raw(self) -> bytes:
        """The output's bytes (decoding base64 text)."""
        return b64.decode(self.data) if self.base64 else self.data

    @classmethod
    def from_image(cls, image: Image, file_type: str = "png", **save_options: Any) -> Output:
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG" if file_type.lower() == "jpg" else file_type.upper(), **save_options)
        return cls(buffer.getvalue(), file_type.lower())


@dataclass(frozen=True)
class RankContext:
    """What a rank knows about itself while it sets up."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    options: dict[str, str] = field(default_factory=dict)
    max_loaded_loras: int = 8  # adapters this rank keeps loaded (--max-loaded-loras)
    max_lora_rank: int = 64  # the rank hotswapped adapters may have at most (--max-lora-rank)

    @property
    def is_leader(self) -> bool:
        return self.rank == 0


class JobContext:
    """One job as seen by one rank, available inside ``predict`` via ``current_job()``."""

    def __init__(
        self,
        job_id: str,
        inputs: dict[str, Any],
        rank: int,
        world_size: int,
        decide: Callable[[int, int | None], bool],
        publish_preview: Callable[[int, Any], None] | None = None,
        loras: Sequence[Lora] = (),
        *,
        batch: Sequence[dict[str, Any]] = (),
        job_ids: Sequence[str] = (),
        send_preview: Callable[[str, int, Any], None] | None = None,
    ) -> None:
        self.job_id = job_id
        self.inputs = inputs
        self.rank = rank
        self.world_size = world_size
        self._decide = decide
        self._publish_preview = publish_preview  # rank 0's (step, image) sender; None elsewhere
        self._send_preview = send_preview  # rank 0's (job id, step, image) sender, any job of a batch
        #: A batch's jobs: each one's ``predict`` keyword arguments, leader first (empty: a lone job).
        self.batch: tuple[dict[str, Any], ...] = tuple(batch)
        #: The ids of the jobs this call runs, leader (``job_id``) first.
        self.job_ids: tuple[str, ...] = tuple(job_ids) or (job_id,)
        self.steps_done = 0
        #: The adapters this job applies, in the request's order (none: the base model).
        self.loras: tuple[Lora, ...] = tuple(loras)
        self.adapters: AdapterReport | None = None

    def report_adapters(self, report: AdapterReport) -> None:
        """Say what the adapter cache holds after this job and what it loaded (with the
        seconds each took) and evicted for it; rank 0's report reaches the server, which
        prefers a group that holds a job's adapters and counts loads and evictions."""
        self.adapters = report

    def step(self, step: int, total: int | None = None) -> None:
        """Mark a step boundary: report progress and apply a pending cancellation.

        A collective call: every rank must call it at the same boundaries. Rank 0 decides
        continue/stop and broadcasts it, so every rank raises ``JobCancelled`` at the same
        step and none is left waiting in a collective its peers never enter.
        """
        self.steps_done = step
        if self._decide(step, total):
            raise JobCancelled(self.job_id)

    def diffusers_callback(
        self, pipe: Any, step_index: int, timestep: Any, callback_kwargs: dict[str, Any]
    ) -> dict[str, Any]:
        """A ``callback_on_step_end`` for diffusers pipelines.

        Raising out of the pipeline (rather than setting its ``interrupt`` flag) also skips
        the VAE decode, which the pipelines' own interrupt still runs.
        """
        self.step(step_index + 1, getattr(pipe, "num_timesteps", None))
        return callback_kwargs

    def preview(self, image: Any, index: int = 0) -> None:
        """Publish a picture of the job's state after the last step: a PIL image, an HxWx3
        array or tensor (uint8, or floats in [0, 1]), or a function of no arguments that
        returns one (so that making the picture, too, happens off the denoising loop).

        Rank 0 sends it to the server as a JPEG of at most ``PREVIEW_MAX_SIDE`` (256) pixels
        on its long side (clients see it at ``/v1/jobs/{id}/preview`` and as a ``preview``
        event), made and encoded on a thread of its own: do not change what you hand over
        afterwards. When that thread falls behind, a preview that a newer one replaced is
        dropped. On the other ranks it does nothing. Not a collective: call it on rank 0
        alone if you like. In a batch, ``index`` says whose picture it is (``job_ids[index]``).
        """
        if not 0 <= index < len(self.job_ids):
            raise IndexError(f"preview index {index} is outside a batch of {len(self.job_ids)} job(s)")
        if self._send_preview is not None:
            self._send_preview(self.job_ids[index], self.steps_done, image)
        elif self._publish_preview is not None and index == 0:
            self._publish_preview(self.steps_done, image)


class Predictor:
    """Base class of predictors written for this server (see the module docstring)."""

    #: True when ``setup`` initialises ``torch.distributed`` itself (the original server's
    #: contract); otherwise the rank initialises it before calling ``setup``.
    initializes_process_group: bool = False
    #: True when a cancel must reach ``interrupt`` from a background thread on every rank, for
    #: a pipeline that cannot call ``job.step`` at its step boundaries.
    cancel_by_interrupt: bool = False
    #: True when the original API answers a finished job that named ``output_path`` with
    #: that path instead of the output's base64 (what the original did for predictors that
    #: wrote the file themselves).
    replies_with_output_path: bool = False
    #: True when ``predict`` applies ``current_job().loras``: the request schema then has the
    #: server's ``loras`` field (adapters chosen by name, see ``para_attn_server.adapters``).
    supports_loras: bool = False
    #: The ``--option`` values it accepts, as a msgspec Struct (field names, types, limits):
    #: the server refuses any other option, naming it, before a rank starts. None: the
    #: options reach ``configure`` unchecked.
    options_type: ClassVar[type[msgspec.Struct] | None] = None
    #: The ``model_index.json`` pipeline classes (``_class_name``) it serves from
    #: ``--model-path``: how ``--model-path`` alone finds its predictor. Empty: none.
    pipeline_names: ClassVar[tuple[str, ...]] = ()

    def request_function(self) -> Callable[..., Any]:
        """The callable whose signature is the request schema: ``predict``."""
        return self.predict

    def interrupt(self, job_id: str) -> None:
        """Stop the running job now (only called when ``cancel_by_interrupt`` is True)."""

    def configure(self, world_size: int, options: dict[str, str]) -> None:
        """Called first in every process (server and ranks) with the group size and the
        operator's ``--option`` values, so ``validate`` can check world-size limits and a
        bad option fails at startup. Raise ``ConfigurationError`` to refuse."""

    def model_defaults(self) -> dict[str, Any]:
        """After ``configure``: request defaults for the model it will load (its model card's,
        such as a distilled model's fewer steps), over ``predict``'s own; the operator's
        ``-o defaults`` override them."""
        return {}

    def parallel_layout(self) -> dict[str, int]:
        """After ``configure``: how a group's ranks split each job, by degree
        (``{"ulysses": 2, "ring": 1, "cfg": 2}``), shown in ``/server_status`` and the ready
        log. Empty (the default): not said."""
        return {}

    def setup(self, context: RankContext) -> None:
        """Build and parallelize the pipeline on this rank."""

    def validate(self, inputs: dict[str, Any]) -> None:
        """Reject inputs the schema cannot express; raise ``InputError(message, field)``."""

    def adapter_fit(self) -> AdapterFit | None:
        """After ``setup``, on rank 0 of a predictor that ``supports_loras``: the model's
        layers an adapter may target, with their features, and the largest rank it can
        load, so the server refuses an adapter that would not load before a job needs it.
        None: the server checks only that each adapter's file is a LoRA."""
        return None

    def predict(self, *args: Any, **inputs: Any) -> Output | None:
        """Run one job on this rank; rank 0 returns the output. Subclasses declare their
        request fields as keyword parameters (``(*args, **inputs)`` lets them, for mypy)."""
        raise NotImplementedError

    def batch_key(self, inputs: dict[str, Any]) -> Hashable | None:
        """In the server process, on a job's inputs as ``validate`` gets them (the server's
        fields, such as ``loras``, included): jobs whose keys are equal and not None may run
        as one ``predict_batch`` call. None (the default): this job always runs alone."""
        return None

    def predict_batch(self, batch: list[dict[str, Any]]) -> list[Output | None]:
        """Run several jobs as one call on this rank: each dict is what ``predict`` would get
        as keyword arguments, leader first. Rank 0 returns one output per job, in order (None
        fails that job alone); the other ranks return ``[None] * len(batch)``."""
        raise NotImplementedError(f"{type(self).__name__} gives batch keys but has no predict_batch")


_current_job: contextvars.ContextVar[JobContext] = contextvars.ContextVar("para_attn_job")


def current_job() -> JobContext:
    """The job (or batch) this rank is running; only valid inside ``predict`` and ``predict_batch``."""
    try:
        return _current_job.get()
    except LookupError:
        raise RuntimeError("current_job() called outside predict") from None


@contextmanager
def running(job: JobContext) -> Iterator[JobContext]:
    token = _current_job.set(job)
    try:
        yield job
    finally:
        _current_job.reset(token)


__all__ = [
    "JobCancelled",
    "JobContext",
    "Output",
    "Predictor",
    "RankContext",
    "current_job",
]
