"""Predictors written for the original server, behind the ``Predictor`` contract.

Such a predictor is any class with ``setup()`` and ``predict(**inputs)`` that does not derive
from ``Predictor``: its ``setup()`` takes no argument and calls ``dist.init_process_group()``,
it keeps its pipeline in ``self.pipe``, and ``predict`` returns ``(base64, file_type)`` on rank
0 or writes the ``output_path`` it was given. ``as_predictor`` wraps one when it is loaded;
nothing else in the server knows these rules:

- cancellation: a step callback is added to ``self.pipe``'s calls (rank 0's one decision
  reaches every rank at the same step); a pipeline that takes no callback is stopped through
  ``pipe._interrupt`` from a background thread on every rank, as the original did;
- ``output_path``: the predictor writes into a private per-job directory that no client
  names; the file comes back as the job's output and the server writes it to the client's
  confined path like any other output (so a symlink planted in the output directory cannot
  steer the predictor's own write).
"""

from __future__ import annotations

import inspect
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path, PurePosixPath
from typing import Any

from para_attn_server.errors import JobCancelled
from para_attn_server.predictor import Output, Predictor, RankContext, current_job
from para_attn_server.schema import OUTPUT_PATH


def as_predictor(obj: object) -> Predictor:
    """``obj`` itself if it is a ``Predictor``, else ``obj`` wrapped for the original contract."""
    return obj if isinstance(obj, Predictor) else OriginalServerPredictor(obj)


class OriginalServerPredictor(Predictor):
    initializes_process_group = True

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.replies_with_output_path = OUTPUT_PATH in _parameters(inner.predict)
        self._interrupted: str | None = None

    def __repr__(self) -> str:
        return f"{type(self).__name__}({type(self.inner).__qualname__})"

    def request_function(self) -> Callable[..., Any]:
        return self.inner.predict  # type: ignore[no-any-return]

    def validate(self, inputs: dict[str, Any]) -> None:
        check = getattr(self.inner, "validate", None)
        if callable(check):
            check(inputs)

    def setup(self, context: RankContext) -> None:
        self.inner.setup()
        pipe = getattr(self.inner, "pipe", None)
        self.cancel_by_interrupt = pipe is None or not install_step_callback(pipe)

    def interrupt(self, job_id: str) -> None:
        pipe = getattr(self.inner, "pipe", None)
        if pipe is not None:
            pipe._interrupt = True
            self._interrupted = job_id

    def predict(self, **inputs: Any) -> Output | None:
        job_id = current_job().job_id
        private: Path | None = None
        if self.replies_with_output_path and inputs.get(OUTPUT_PATH):
            private = Path(tempfile.mkdtemp(prefix="para-attn-job-"))
            inputs = {**inputs, OUTPUT_PATH: str(private / PurePosixPath(inputs[OUTPUT_PATH]).name)}
        try:
            result = self.inner.predict(**inputs)
            if self._interrupted == job_id:
                raise JobCancelled(job_id)  # the pipeline returned early through its interrupt flag
            if result is None and private is not None:
                return _read_written(Path(inputs[OUTPUT_PATH]))
            return to_output(result)
        finally:
            self._interrupted = None
            if private is not None:
                shutil.rmtree(private, ignore_errors=True)


def to_output(result: object) -> Output | None:
    """The original's result forms: ``(base64 or bytes, file_type)``, or None. Base64 stays
    base64 (``Output.base64``): the original API answers it as it came."""
    if result is None or isinstance(result, Output):
        return result
    if isinstance(result, tuple) and len(result) == 2:
        data, file_type = result
        if isinstance(data, str):
            try:
                return Output.from_base64(data, str(file_type))
            except ValueError as exc:
                raise TypeError(f"predict returned a string that is not base64: {exc}") from None
        return Output(bytes(data), str(file_type))
    raise TypeError(f"predict must return Output, (data, file_type) or None, not {type(result).__name__}")


def _read_written(path: Path) -> Output | None:
    # Only a regular file counts: the private directory is ours, but the predictor could
    # have left a symlink there.
    if not path.is_file() or path.is_symlink():
        return None
    return Output(path.read_bytes(), path.suffix.lstrip(".") or "bin")


def _parameters(function: Any) -> set[str]:
    try:
        return set(inspect.signature(function).parameters)
    except (TypeError, ValueError):
        return set()


def install_step_callback(pipe: Any) -> bool:
    """Make ``pipe(...)`` apply the current job's step hook on every call.

    Swaps the pipeline's class for a subclass whose ``__call__`` adds a
    ``callback_on_step_end`` (chained with the caller's own), so ``isinstance`` and every
    attribute keep working. Returns False when the pipeline takes no such callback.
    """
    base = type(pipe)
    if getattr(base, "_para_attn_step_hook", False):
        return True  # already installed (the subclass's own signature hides the parameter)
    if "callback_on_step_end" not in _parameters(base.__call__):
        return False

    def __call__(self: Any, *args: Any, **kwargs: Any) -> Any:  # noqa: N807 - becomes the class's __call__
        try:
            job = current_job()
        except RuntimeError:
            return base.__call__(self, *args, **kwargs)
        user_callback = kwargs.get("callback_on_step_end")

        def callback(pipe: Any, step: int, timestep: Any, callback_kwargs: dict[str, Any]) -> dict[str, Any]:
            if user_callback is not None:
                callback_kwargs = user_callback(pipe, step, timestep, callback_kwargs) or callback_kwargs
            return job.diffusers_callback(pipe, step, timestep, callback_kwargs)

        kwargs["callback_on_step_end"] = callback
        return base.__call__(self, *args, **kwargs)

    pipe.__class__ = type(base.__name__, (base,), {"__call__": __call__, "_para_attn_step_hook": True})
    return True
