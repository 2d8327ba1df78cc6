"""The baseline: a predictor called directly in its rank processes, no server at all."""

from __future__ import annotations

import os
import time
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from para_attn_server.testing import free_port


def _rank(
    rank: int, world: int, port: int, model: str, inputs: dict[str, Any], repeat: int, warmup: int, out: Any
) -> None:
    from para_attn_server.plugins import Plugins
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
    times = []
    for i in range(warmup + repeat):
        dist.barrier()
        start = time.perf_counter()
        with running(JobContext(f"direct-{i}", kwargs, rank, world, lambda step, total: False)):
            predictor.predict(**kwargs)
        if i >= warmup:
            times.append(time.perf_counter() - start)
    if rank == 0:
        out.put(times)
    dist.destroy_process_group()


def direct_call_times(model: str, world: int, inputs: dict[str, Any], repeat: int, warmup: int = 3) -> list[float]:
    """Seconds per ``predict`` call on rank 0, every rank calling it in lockstep."""
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    port = free_port()
    procs = [
        ctx.Process(target=_rank, args=(r, world, port, model, inputs, repeat, warmup, queue)) for r in range(world)
    ]
    for p in procs:
        p.start()
    times: list[float] = queue.get(timeout=600)
    for p in procs:
        p.join(60)
    return times
