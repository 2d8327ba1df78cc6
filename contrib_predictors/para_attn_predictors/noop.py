"""``noop``: one all_reduce across the ranks and ``size`` bytes back.

It measures what the server itself costs (benchmarks, load tests) and exercises the step
hook without a model: ``steps`` step boundaries ``step_seconds`` apart.
"""

from __future__ import annotations

import functools
import os
import time
from collections.abc import Callable
from typing import Annotated, Any

import msgspec

from para_attn_server import Output, Predictor, RankContext, current_job, hookimpl


@functools.lru_cache(maxsize=8)
def _payload(size: int) -> bytes:
    return os.urandom(size)


class NoopOptions(msgspec.Struct, forbid_unknown_fields=True):
    """``noop`` takes no ``-o`` option (and no --model-path)."""


class NoopPredictor(Predictor):
    options_type = NoopOptions

    def setup(self, context: RankContext) -> None:
        self.rank = context.rank
        self.world_size = context.world_size

    def predict(
        self,
        size: Annotated[int, msgspec.Meta(ge=0, le=1 << 30, description="Bytes to return")] = 1024,
        steps: Annotated[int, msgspec.Meta(ge=0, le=100_000)] = 0,
        step_seconds: Annotated[float, msgspec.Meta(ge=0, le=60)] = 0.0,
        step_hook: bool = True,
    ) -> Output | None:
        if self.world_size > 1:
            # Imported here, on the ranks: the server only reads this class's signature.
            import torch
            import torch.distributed as dist

            dist.all_reduce(torch.ones(1))
        job = current_job()
        for step in range(1, steps + 1):
            if step_seconds:
                time.sleep(step_seconds)
            if step_hook:  # off only to measure what the hook costs
                job.step(step, steps)
        return Output(_payload(size), "bin") if self.rank == 0 else None


@hookimpl
def register_predictors(register: Callable[[str, type[Any]], None]) -> None:
    register("noop", NoopPredictor)
