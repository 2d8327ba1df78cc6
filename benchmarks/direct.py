"""The baseline: a predictor called directly in its rank processes, no server at all.

``DirectRanks`` starts the ranks once and runs rounds of calls on command, so that a suite
can interleave rounds of direct calls with rounds through the server (this machine's speed
drifts from minute to minute: only interleaved rounds compare fairly). Idle, the ranks wait
on their command queues and use no CPU.
"""

from __future__ import annotations

import os
import time
from types import TracebackType
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from para_attn_server.testing import free_port


def _rank(rank: int, world: int, port: int, model: str, inputs: dict[str, Any], commands: Any, out: Any) -> None:
    from para_attn_server.plugin.manager import Plugins
    from para_attn_server.predictor import JobContext, RankContext, running
    from para_attn_server.schema import InputSchema

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world))
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))  # as the server's ranks do
    dist.init_process_group("gloo", rank=rank, world_size=world)
    predictor: Any = Plugins.load().resolve_predictor(model)
    predictor.configure(world, {})
    predictor.setup(RankContext(rank, world, rank, torch.device("cpu")))
    schema = InputSchema(predictor)
    kwargs = schema.predict_kwargs(schema.convert(inputs))
    out.put("ready")
    calls = 0
    while (repeat := commands.get()) is not None:
        times = []
        for _ in range(repeat):
            calls += 1
            dist.barrier()
            start = time.perf_counter()
            with running(JobContext(f"direct-{calls}", kwargs, rank, world, lambda step, total: False)):
                predictor.predict(**kwargs)
            times.append(time.perf_counter() - start)
        if rank == 0:
            out.put(times)
    dist.destroy_process_group()


class DirectRanks:
    """``world`` ranks of ``model`` set up once; ``run(n)`` times n calls on rank 0."""

    def __init__(self, model: str, world: int, inputs: dict[str, Any]) -> None:
        ctx = mp.get_context("spawn")
        self._out = ctx.Queue()
        self._commands = [ctx.Queue() for _ in range(world)]
        port = free_port()
        self._procs = [
            ctx.Process(target=_rank, args=(r, world, port, model, inputs, self._commands[r], self._out))
            for r in range(world)
        ]
        for p in self._procs:
            p.start()
        for _ in range(world):
            assert self._out.get(timeout=600) == "ready"

    def run(self, repeat: int) -> list[float]:
        for commands in self._commands:
            commands.put(repeat)
        times: list[float] = self._out.get(timeout=600)
        return times

    def __enter__(self) -> DirectRanks:
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None) -> None:
        for commands in self._commands:
            commands.put(None)
        for p in self._procs:
            p.join(60)
            if p.is_alive():
                p.kill()
