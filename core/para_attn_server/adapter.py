"""Core's built-in plugin: turns a predictor's methods into the hook calls.

It also carries the compatibility path for predictors written for the original server:
``setup()`` without arguments, ``(base64, file_type)`` results, and cancellation through
their ``self.pipe`` (the original set ``pipe._interrupt`` from a thread on every rank; here
the pipeline's ``callback_on_step_end`` applies rank 0's one decision on every rank).
"""

from __future__ import annotations

import base64
import binascii
import inspect
from typing import Any

import pluggy

from .hookspecs import PROJECT
from .predictor import JobContext, Output, RankContext, current_job, is_legacy

hookimpl = pluggy.HookimplMarker(PROJECT)


@hookimpl
def validate(predictor: Any, inputs: dict[str, Any]) -> None:
    check = getattr(predictor, "validate", None)
    if callable(check):
        check(inputs)


@hookimpl
def setup(predictor: Any, context: RankContext) -> None:
    if is_legacy(predictor):
        predictor.setup()
    else:
        predictor.setup(context)


@hookimpl
def predict(predictor: Any, job: JobContext) -> Output | None:
    result = predictor.predict(**job.inputs)
    if result is None or isinstance(result, Output):
        return result
    if isinstance(result, tuple) and len(result) == 2:
        data, file_type = result
        if isinstance(data, str):
            try:
                data = base64.b64decode(data, validate=True)
            except binascii.Error as exc:
                raise TypeError(f"predict returned a string that is not base64: {exc}") from None
        return Output(bytes(data), str(file_type))
    raise TypeError(f"predict must return Output, (data, file_type) or None, not {type(result).__name__}")


def install_step_callback(pipe: Any) -> bool:
    """Make ``pipe(...)`` apply the current job's step hook on every call.

    Swaps the pipeline's class for a subclass whose ``__call__`` adds a
    ``callback_on_step_end`` (chained with the caller's own), so ``isinstance`` and every
    attribute keep working. Returns False when the pipeline takes no such callback.
    """
    base = type(pipe)
    if getattr(base, "_para_attn_step_hook", False):
        return True  # already installed (the subclass's own signature hides the parameter)
    try:
        params = inspect.signature(base.__call__).parameters
    except (TypeError, ValueError):
        return False
    if "callback_on_step_end" not in params:
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
