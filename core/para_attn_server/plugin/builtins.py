"""Core's built-in plugin: a ``Predictor``'s own methods as the hook implementations, and
the scheduling fields every request has (``priority``, ``max_queue_seconds``).

Registered first in every plugin manager, so other plugins' ``validate`` hooks run beside the
predictor's and their ``predict`` wrappers see every rank's call.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import TYPE_CHECKING, Annotated, Any

import msgspec

from para_attn_server.plugin.markers import hookimpl
from para_attn_server.predictor import JobContext, Output, Predictor, RankContext

if TYPE_CHECKING:
    from para_attn_server.settings import Settings

Priority = Annotated[
    int,
    msgspec.Meta(
        ge=-100, le=100, description="Higher runs first (first come, first served among equals); at most --max-priority"
    ),
]
QueueSeconds = Annotated[
    float,
    msgspec.Meta(
        gt=0,
        le=31 * 86400,
        description="Seconds the job may wait to start; not started by then, it ends 'expired' without running "
        "(default: the server's --max-queue-seconds, none unless set)",
    ),
]


@hookimpl
def register_request_fields(register: Callable[..., None], settings: Settings) -> None:
    ceiling = settings.jobs.max_priority

    def capped(priority: int) -> None:
        if priority > ceiling:
            raise ValueError(f"at most {ceiling} on this server (--max-priority), not {priority}")

    register("priority", Priority, 0, capped)
    register("max_queue_seconds", QueueSeconds | None, None)


@hookimpl
def validate(predictor: Predictor, inputs: dict[str, Any]) -> None:
    predictor.validate(inputs)


@hookimpl
def batch_key(predictor: Predictor, inputs: dict[str, Any]) -> Hashable | None:
    return predictor.batch_key(inputs)


@hookimpl
def setup(predictor: Predictor, context: RankContext) -> None:
    predictor.setup(context)


@hookimpl
def predict(predictor: Predictor, job: JobContext) -> Output | None:
    result = predictor.predict(**job.inputs)
    if result is None or isinstance(result, Output):
        return result
    raise TypeError(f"predict must return Output or None, not {type(result).__name__}")


@hookimpl
def predict_batch(predictor: Predictor, job: JobContext) -> list[Output | None]:
    results = predictor.predict_batch(list(job.batch))
    if results is None:  # a rank other than 0 may say "nothing" at once
        return [None] * len(job.batch)
    if not isinstance(results, list | tuple) or len(results) != len(job.batch):
        raise TypeError(f"predict_batch must return a list of {len(job.batch)} outputs, not {results!r:.80}")
    for result in results:
        if result is not None and not isinstance(result, Output):
            raise TypeError(f"predict_batch must return Outputs or None, not {type(result).__name__}")
    return list(results)
