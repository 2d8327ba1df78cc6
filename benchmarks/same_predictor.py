"""The one predictor that the comparison suite serves through both servers.

It is written for the original server's contract, which ours also accepts: ``setup()``
initialises torch.distributed itself and sets ``self.pipe``; ``predict(**kwargs)`` runs on
every rank and returns ``(base64_string, "png")`` on rank 0. Each job is one all_reduce
across the ranks, and its answer is encoded once in ``setup``, so what the servers are
timed on is their own work: dispatching a job to the ranks and carrying the answer back.
"""

from __future__ import annotations

import base64
from typing import Any

KIB = 1 << 10
MIB = 1 << 20
SIZES = (KIB, 16 * MIB)


def payload_bytes(size: int) -> bytes:
    """The answer of a job of ``size`` bytes (the floor server holds the same bytes)."""
    return (bytes(range(256)) * (size // 256 + 1))[:size]


class OneAllReduce:
    """A pipeline shaped like a diffusers one (it takes ``callback_on_step_end``, so our
    server takes its usual path for a diffusers pipeline) that has no steps: one all_reduce,
    like a forward pass that every rank must enter, and no step boundary for either server
    to act on (the step hook's own cost is the progress suite's figure)."""

    def __init__(self) -> None:
        self._interrupt = False  # the original's cancel flag, set from its worker thread

    def __call__(self, callback_on_step_end: Any = None) -> None:
        import torch
        import torch.distributed as dist

        dist.all_reduce(torch.ones(1))


class AllReduceOnce:
    """One all_reduce per job; rank 0 answers ``size`` bytes (one of ``sizes``) as base64."""

    def __init__(self, sizes: tuple[int, ...] = SIZES) -> None:
        self.sizes = tuple(sizes)
        self.rank = -1
        self.answers: dict[int, str] = {}

    def setup(self) -> None:
        import torch.distributed as dist

        dist.init_process_group()
        self.rank = dist.get_rank()
        self.pipe = OneAllReduce()
        if self.rank == 0:
            self.answers = {size: base64.b64encode(payload_bytes(size)).decode() for size in self.sizes}

    def predict(self, size: int = KIB) -> tuple[str, str] | None:
        if size not in self.sizes:
            raise ValueError(f"size must be one of {self.sizes}, not {size}")
        self.pipe()
        if self.rank != 0:
            return None
        return self.answers[size], "png"
