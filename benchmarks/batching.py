"""``--only batching``: what batching compatible jobs buys when many arrive at once, and what
it costs a job that arrives alone.

Two servers in the same run, the tiny model on 1 rank each, 32x32, 4 steps: one with
``--max-batch 8``, one with ``--max-batch 1`` (off); ``--batch-wait-ms`` 0 on both, so a
lone job never waits. Each round, on each server in turn: ``WAVES`` waves in which 8
clients each send one job at once (``POST /v1/jobs?wait``, the output bytes back; every job
its own prompt and seed) and wait for it: jobs per second; then lone jobs, one at a time,
on each server in turn: latency. Rounds are interleaved and alternate which server goes
first; ratios are of the medians (batching on over off). The
batched server's own count of pipeline calls by size (``/metrics``' ``para_attn_batch_size``)
says how many jobs really shared a call.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

from .harness import Client, Report, Stat, metric_samples, post_head, raw_request, server

SUITE = "batching"
CLIENTS = 8
WAVES = 4  # per burst
FIELDS: dict[str, Any] = {"width": 32, "height": 32, "num_inference_steps": 4}


async def burst(port: int, round_index: int) -> float:
    """Jobs per second of ``WAVES`` waves in which ``CLIENTS`` clients each send one job at
    once and wait for it (many requests arriving at once, the case batching is for)."""
    connections = [await asyncio.open_connection("127.0.0.1", port) for _ in range(CLIENTS)]

    async def one_job(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, seed: int) -> None:
        body = json.dumps({**FIELDS, "prompt": f"a cat number {seed}", "seed": seed}).encode()
        status, data = await raw_request(reader, writer, post_head("/v1/jobs?wait=120", body, "image/png"), body)
        assert status == 201, (status, data[:300])

    start = time.perf_counter()
    for wave in range(WAVES):
        first = ((round_index + 1) * WAVES + wave) * CLIENTS  # round -1: the warm-up
        await asyncio.gather(*(one_job(r, w, first + n) for n, (r, w) in enumerate(connections)))
    seconds = time.perf_counter() - start
    for _, writer in connections:
        writer.close()
    return CLIENTS * WAVES / seconds


def lone(ports: list[int], index: int) -> list[float]:
    """One job alone on each server in turn: its latency on each."""
    seconds = []
    for port in ports:
        body = json.dumps({**FIELDS, "prompt": "a lone cat", "seed": index}).encode()
        c = Client(port)
        start = time.perf_counter()
        status, data = c.request("POST", "/v1/jobs?wait=120", body, {"accept": "image/png"})
        seconds.append(time.perf_counter() - start)
        assert status == 201, (status, data[:300])
    return seconds


def calls_by_size(port: int) -> dict[str, int]:
    """Pipeline calls the server started, by how many jobs each ran (its histogram's
    buckets: "1", "2", "3-4", "5-8")."""
    cumulative = {
        int(float(sample.labels["le"])): int(sample.value)
        for sample in metric_samples(port)
        if sample.name == "para_attn_batch_size_bucket" and sample.labels["le"] != "+Inf"
    }
    below, lower, sizes = 0, 1, {}
    for bound in sorted(cumulative):
        if cumulative[bound] > below:
            sizes[str(bound) if bound == lower else f"{lower}-{bound}"] = cumulative[bound] - below
        below, lower = cumulative[bound], bound + 1
    return sizes


def batching(report: Report, quick: bool) -> None:
    rounds, lone_jobs = (2, 4) if quick else (8, 12)
    throughput: dict[str, list[float]] = {"on": [], "off": []}
    latency: dict[str, list[float]] = {"on": [], "off": []}
    with server("tiny", 1, "--max-batch", "8") as on, server("tiny", 1, "--max-batch", "1") as off:
        ports = {"on": on.port, "off": off.port}
        for port in ports.values():  # warm-up, untimed
            asyncio.run(burst(port, -1))
        for index in range(rounds):
            order = list(ports.items()) if index % 2 == 0 else list(reversed(ports.items()))
            for name, port in order:
                throughput[name].append(asyncio.run(burst(port, index)))
            for job in range(lone_jobs):  # lone jobs, each server in turn, the first alternating
                names = [name for name, _ in order] if job % 2 == 0 else [name for name, _ in reversed(order)]
                for name, took in zip(names, lone([ports[name] for name in names], job), strict=True):
                    latency[name].append(took)
        sizes = calls_by_size(on.port)
    _rows(report, throughput, latency, sizes, rounds)


def _rows(
    report: Report,
    throughput: dict[str, list[float]],
    latency: dict[str, list[float]],
    sizes: dict[str, int],
    rounds: int,
) -> None:
    on, off = Stat.of(throughput["on"]), Stat.of(throughput["off"])
    detail = f"{WAVES} waves of {CLIENTS} jobs sent at once, {rounds} interleaved rounds"
    report.add(SUITE, "tiny 32x32, 4 steps: jobs/s, --max-batch 1", off.median, "jobs/s", detail, stat=vars(off))
    ratio = on.median / off.median
    report.add(SUITE, "tiny: jobs/s, --max-batch 8", on.median, "jobs/s", f"x{ratio:.2f} batching off (target >= 2.0)",
               stat=vars(on), ratio=ratio, passed=ratio >= 2.0)  # fmt: skip
    lone_on, lone_off = Stat.of(latency["on"]), Stat.of(latency["off"])
    report.add(SUITE, "tiny: a lone job, --max-batch 1", lone_off.median, "s", lone_off.ms(), stat=vars(lone_off))
    ratio = lone_on.median / lone_off.median
    report.add(SUITE, "tiny: a lone job, --max-batch 8", lone_on.median, "s",
               f"{lone_on.ms()}  x{ratio:.3f} batching off (target <= 1.05)",
               stat=vars(lone_on), ratio=ratio, passed=ratio <= 1.05)  # fmt: skip
    alone = sizes.get("1", 0)
    detail = ", ".join(f"{count} of {size}" for size, count in sizes.items())
    report.add(SUITE, "calls that ran several jobs, --max-batch 8", sum(sizes.values()) - alone, "calls",
               f"pipeline calls by jobs in them: {detail}", calls_by_size=sizes)  # fmt: skip
