"""Core's built-in plugin: a ``Predictor``'s own methods as the hook implementations.

Registered first in every plugin manager, so other plugins' ``validate`` hooks run beside the
predictor's and their ``predict`` wrappers see every rank's call.
"""

from __future__ import annotations

from typing import Any

from para_attn_server.plugin.markers import hookimpl
from para_attn_server.predictor import JobContext, Output, Predictor, RankContext


@hookimpl
def validate(predictor: Predictor, inputs: dict[str, Any]) -> None:
    predictor.validate(inputs)


@hookimpl
def setup(predictor: Predictor, context: RankContext) -> None:
    predictor.setup(context)


@hookimpl
def predict(predictor: Predictor, job: JobContext) -> Output | None:
    result = predictor.predict(**job.inputs)
    if result is None or isinstance(result, Output):
        return result
    raise TypeError(f"predict must return Output or None, not {type(result).__name__}")
