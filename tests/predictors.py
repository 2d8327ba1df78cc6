"""Predictors for the integration tests, each named by the behaviour it injects.

Rank processes import them as ``tests.predictors:Name`` (the tests put the repository root
on PYTHONPATH). The server process imports this module only to read ``predict``'s
signature, so heavy imports (torch, diffusers) stay inside the methods.

Where a test must hold a job at a known point it names a *hold* file: the predictor waits
until the file exists, and the test creates it when it is ready (no sleeping on either side
of the test's assertions).
"""

from __future__ import annotations

import base64
import io
import json
import os
import signal
import threading
import time
from pathlib import Path
from typing import Annotated, Any, Literal

import msgspec

from para_attn_predictors.tiny import TinyFluxPredictor, TinyOptions
from para_attn_server import Image, Mask, Output, Predictor, RankContext, Video, current_job

Fault = Literal["none", "raise", "exit", "kill", "freeze", "hang_collective", "hang_outside"]


def _take(marker: str | None) -> bool:
    """True without a marker; with one, True for the one caller that renames it away."""
    if marker is None:
        return True
    try:
        os.rename(marker, f"{marker}.taken")
    except FileNotFoundError:
        return False
    return True


def wait_for_file(path: str | os.PathLike[str]) -> None:
    while not os.path.exists(path):
        time.sleep(0.01)


class Faulty(Predictor):
    """``steps`` steps, each an all_reduce across the ranks (like a model's forward) and a
    step boundary; ``fault`` strikes on ``fault_rank`` (-1: every rank) at ``fault_step``,
    before that step's all_reduce.

    - raise: a RuntimeError naming the rank
    - exit / kill / freeze: ``os._exit(13)`` / SIGKILL / SIGSTOP of the rank's own process
    - hang_collective: waits inside an all_reduce that no other rank ever enters
    - hang_outside: waits forever outside any collective (its peers wait in the all_reduce)

    ``pad`` adds that many bytes to the output (to exceed ``--max-output-bytes``). With
    ``fault_once=PATH`` the fault strikes only in the run whose faulting rank takes PATH
    (an atomic rename): a job's first run faults, its next attempt does not. With
    ``-o setup_fault_marker=PATH``, the next setup of rank 1 that finds PATH takes it (an
    atomic rename, so exactly one setup does) and raises: a test arms a restart to fail once.
    """

    def setup(self, context: RankContext) -> None:
        from datetime import timedelta

        import torch.distributed as dist

        self.rank = context.rank
        self.world_size = context.world_size
        marker = context.options.get("setup_fault_marker")
        if marker and self.rank == 1:
            try:
                os.rename(marker, f"{marker}.taken")
            except FileNotFoundError:
                pass
            else:
                raise RuntimeError("injected setup fault on rank 1")
        # No job uses this group, so a rank that waits in it waits for good.
        self.stray = dist.new_group(backend="gloo", timeout=timedelta(hours=1)) if self.world_size > 1 else None

    def predict(
        self,
        *,
        fault: Fault = "none",
        fault_rank: int = -1,
        fault_step: Annotated[int, msgspec.Meta(ge=1)] = 1,
        steps: Annotated[int, msgspec.Meta(ge=0, le=1000)] = 3,
        step_seconds: Annotated[float, msgspec.Meta(ge=0, le=10)] = 0.0,
        hold: str | None = None,
        tag: str = "",
        pad: Annotated[int, msgspec.Meta(ge=0, le=1 << 20)] = 0,
        fault_once: str | None = None,
    ) -> Output | None:
        import torch
        import torch.distributed as dist

        job = current_job()
        if hold:
            wait_for_file(hold)
        for step in range(1, steps + 1):
            if step_seconds:
                time.sleep(step_seconds)
            if step == fault_step and fault_rank in (-1, self.rank) and _take(fault_once):
                self._inject(fault)
            if self.world_size > 1:
                dist.all_reduce(torch.ones(1))
            job.step(step, steps)
        if self.rank != 0:
            return None
        report = {"tag": tag, "steps": steps, "world_size": self.world_size, "pad": "x" * pad}
        return Output(json.dumps(report).encode(), "json")

    def _inject(self, fault: Fault) -> None:
        import torch
        import torch.distributed as dist

        if fault == "raise":
            raise RuntimeError(f"injected fault on rank {self.rank}")
        if fault == "exit":
            os._exit(13)
        if fault == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        if fault == "freeze":
            os.kill(os.getpid(), signal.SIGSTOP)
        if fault == "hang_collective":
            dist.all_reduce(torch.ones(1), group=self.stray)
        if fault == "hang_outside":
            threading.Event().wait()


class BlocksSetup(Predictor):
    """Rank r's setup() waits for the file ``rank<r>`` in ``-o release_dir=DIR``: the
    server stays not ready until the test creates them."""

    def setup(self, context: RankContext) -> None:
        wait_for_file(Path(context.options["release_dir"]) / f"rank{context.rank}")

    def predict(self, text: str = "ok") -> Output | None:
        return Output(text.encode(), "txt")


class SetupRaises(Predictor):
    def setup(self, context: RankContext) -> None:
        raise RuntimeError("setup exploded on purpose")

    def predict(self) -> Output | None:
        return None


class TakesWebhook(Predictor):
    """Its ``predict`` has a parameter named like the webhooks plugin's request field."""

    def predict(self, webhook: str = "") -> Output | None:
        return None


class Greeter(Predictor):
    """Carries state from ``__init__``, to show the server runs the instance it was handed."""

    def __init__(self, greeting: str) -> None:
        self.greeting = greeting

    def setup(self, context: RankContext) -> None:
        self.rank = context.rank

    def predict(self, name: str) -> Output | None:
        return Output(f"{self.greeting}, {name}".encode(), "txt") if self.rank == 0 else None


def _run_tiny(predictor: TinyFluxPredictor, prompt: str, steps: int, seed: int, callback: Any) -> Output | None:
    """The tiny pipeline at 32x32 with ``callback`` as its step callback; PNG on rank 0."""
    import torch

    result = predictor.pipe(
        prompt=prompt,
        width=32,
        height=32,
        num_inference_steps=steps,
        max_sequence_length=predictor.max_sequence_length,
        generator=torch.Generator("cpu").manual_seed(seed),
        output_type="np" if predictor.rank == 0 else "latent",
        callback_on_step_end=callback,
    )
    return Output(_png_bytes(result.images[0]), "png") if predictor.rank == 0 else None


class InstrumentedOptions(TinyOptions, kw_only=True, forbid_unknown_fields=True):
    decode_log: str  # the file each VAE decode appends a line to


class InstrumentedTiny(TinyFluxPredictor):
    """The real ``tiny`` pipeline (split with para-attn), instrumented for cancel tests.

    Every VAE decode appends a line to the file named by ``-o decode_log=PATH``. With a
    ``hold`` file, every rank waits for it at the end of step ``hold_at_step``, just
    before the framework's step boundary (where rank 0 decides continue or stop).
    """

    options_type = InstrumentedOptions

    def setup(self, context: RankContext) -> None:
        super().setup(context)
        decode, log = self.pipe.vae.decode, context.options["decode_log"]

        def counted_decode(*args: Any, **kwargs: Any) -> Any:
            with open(log, "a") as f:
                f.write(f"rank {context.rank}\n")
            return decode(*args, **kwargs)

        self.pipe.vae.decode = counted_decode

    def predict(  # type: ignore[override]
        self,
        prompt: str,
        num_inference_steps: Annotated[int, msgspec.Meta(ge=1, le=50)] = 4,
        seed: int = 0,
        hold_at_step: int = 0,
        hold: str | None = None,
    ) -> Output | None:

        job = current_job()

        def callback(pipe: Any, index: int, timestep: Any, tensors: dict[str, Any]) -> dict[str, Any]:
            if hold and index + 1 == hold_at_step:
                wait_for_file(hold)
            return job.diffusers_callback(pipe, index, timestep, tensors)

        return _run_tiny(self, prompt, num_inference_steps, seed, callback)


class CallbackFaultTiny(TinyFluxPredictor):
    """The real ``tiny`` pipeline (split with para-attn) whose ``callback_on_step_end``
    raises at step ``fault_step`` on ``fault_rank`` (-1: every rank), from inside the
    diffusers denoising loop. With a ``hold`` file every rank waits for it before the
    pipeline starts."""

    def predict(  # type: ignore[override]
        self,
        prompt: str,
        num_inference_steps: Annotated[int, msgspec.Meta(ge=1, le=50)] = 4,
        seed: int = 0,
        fault_step: int = 0,
        fault_rank: int = -1,
        hold: str | None = None,
    ) -> Output | None:

        job = current_job()

        def callback(pipe: Any, index: int, timestep: Any, tensors: dict[str, Any]) -> dict[str, Any]:
            if index + 1 == fault_step and fault_rank in (-1, self.rank):
                raise RuntimeError(f"injected fault in the step callback on rank {self.rank} at step {fault_step}")
            return job.diffusers_callback(pipe, index, timestep, tensors)

        if hold:
            wait_for_file(hold)
        return _run_tiny(self, prompt, num_inference_steps, seed, callback)


# ---- predictors written for the original server (no base class, no type hints) --------


def _png_bytes(image: Any) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray((image * 255).round().clip(0, 255).astype("uint8")).save(buffer, format="PNG")
    return buffer.getvalue()


class LegacyTiny:
    """The original server's predictor shape: ``setup()`` initialises torch.distributed
    itself and sets ``self.pipe`` (a real tiny Flux pipeline split with para-attn);
    ``predict`` returns ``(base64, "png")`` on rank 0, or writes ``output_path`` itself.
    Its own step callback (chained with the framework's) can slow every step down."""

    def setup(self):
        import torch.distributed as dist

        from para_attn_predictors.parallel import parallelize_pipeline
        from para_attn_predictors.tiny_flux import build_tiny_flux_pipeline

        dist.init_process_group()
        self.rank = dist.get_rank()
        self.pipe = build_tiny_flux_pipeline()
        self.pipe.set_progress_bar_config(disable=True)
        parallelize_pipeline(self.pipe, device_type="cpu", parallelize_vae=False)

    def predict(self, prompt, num_inference_steps=4, seed=0, output_path=None, step_seconds=0.0):
        import torch

        def pace(pipe, index, timestep, tensors):
            time.sleep(step_seconds)
            return tensors

        result = self.pipe(
            prompt=prompt,
            width=32,
            height=32,
            num_inference_steps=num_inference_steps,
            max_sequence_length=64,
            generator=torch.Generator("cpu").manual_seed(seed),
            output_type="np",
            callback_on_step_end=pace,
        )
        if self.rank != 0:
            return None
        png = _png_bytes(result.images[0])
        if output_path:
            Path(output_path).write_bytes(png)
            return None
        return base64.b64encode(png).decode(), "png"


class _InterruptiblePipe:
    """A pipeline-like object without ``callback_on_step_end``: like older diffusers
    pipelines it checks ``self._interrupt`` each step (agreed across ranks, since every
    step is a collective)."""

    def __init__(self) -> None:
        self._interrupt = False

    def __call__(self, num_inference_steps, step_seconds):
        import torch
        import torch.distributed as dist

        self._interrupt = False
        done = 0
        for step in range(1, num_inference_steps + 1):
            time.sleep(step_seconds)
            flag = torch.tensor([float(self._interrupt)])
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            if flag.item():
                break
            done = step
        return done


class LegacyInterruptPipe:
    """An original-server predictor whose pipe takes no step callback: cancelling must
    fall back to setting ``pipe._interrupt`` on every rank, as the original did."""

    def setup(self):
        import torch.distributed as dist

        dist.init_process_group()
        self.rank = dist.get_rank()
        self.pipe = _InterruptiblePipe()

    def predict(self, num_inference_steps=3, step_seconds=0.0):
        done = self.pipe(num_inference_steps, step_seconds)
        if self.rank != 0:
            return None
        return base64.b64encode(json.dumps({"steps_done": done}).encode()).decode(), "json"


class LegacySetupRaises:
    def setup(self):
        raise RuntimeError("legacy setup exploded on purpose")

    def predict(self, prompt):
        return None


class LegacyWriter:
    """An original-server predictor that writes ``output_path`` itself the way many did:
    ``mkdir(parents=True)`` (which follows a symlink), then the file. ``hold`` waits for a
    file first, so a test can change the output directory in between. Its ``predict`` has
    no type hints, so nothing but the server says what ``output_path`` may be."""

    def setup(self):
        import torch.distributed as dist

        dist.init_process_group()
        self.rank = dist.get_rank()
        self.pipe = None

    def predict(self, text="written", output_path=None, hold=None):
        if hold:
            wait_for_file(hold)
        if self.rank != 0 or not output_path:
            return
        path = Path(output_path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        return


class Pictures(Predictor):
    """Takes pictures. Answers JSON describing what ``predict`` received on rank 0 (mode,
    size, a digest of the pixels), and whether every rank received the same pixels; or, with
    ``answer="png"``, the picture itself as a PNG (to chain jobs with ``job:<id>``)."""

    def setup(self, context: RankContext) -> None:
        self.rank = context.rank

    def predict(
        self,
        image: Image,
        mask_image: Mask | None = None,
        extra: list[Image] | None = None,
        clip: Video | None = None,
        answer: Literal["json", "png"] = "json",
        hold: str | None = None,
    ) -> Output | None:
        import hashlib

        import torch.distributed as dist

        if hold:
            wait_for_file(hold)

        def described(picture: Any) -> dict[str, Any]:
            pixels = hashlib.sha256(picture.tobytes()).hexdigest()
            return {"mode": picture.mode, "size": list(picture.size), "pixels": pixels}

        seen = {"image": described(image), "mask_image": mask_image and described(mask_image)}
        seen["extra"] = [described(picture) for picture in extra or []]
        seen["clip"] = [described(frame) for frame in clip or []]
        everyone: list[Any] = [None] * dist.get_world_size()
        dist.all_gather_object(everyone, seen)
        if self.rank != 0:
            return None
        if answer == "png":
            return Output.from_image(image)
        return Output(json.dumps({**seen, "ranks_agree": all(other == seen for other in everyone)}).encode(), "json")
