"""``--only soak-allocator [--minutes N]``: the soak's load on two servers at once, side by
side: ours, which sets the C allocator at start (``para_attn_server/allocator.py``), and the
same server left on glibc's defaults (``MALLOC_ARENA_MAX`` set to glibc's own default,
8 per CPU, so the server leaves the allocator alone). Each gets its own 8 clients; both
run the same minutes on the same machine, so each does about half the jobs of a lone soak.

Prints each server's RSS slope per 100,000 jobs after the first quarter (as ``soak``), the
C heap's figures at the end (``/metrics``), and the difference. 20 minutes by default:
glibc's growth comes in steps some minutes apart (``--quick``: 2 minutes, a smoke run).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import tempfile
from pathlib import Path

from para_attn_server.testing import Server, server_env

from .harness import Report, metric_samples
from .soak import MIB, SERVER_ARGS, Load, Sample, drive, slope

SUITE = "soak-allocator"
MINUTES, QUICK_MINUTES = 20.0, 2.0
SAMPLE_SECONDS, QUICK_SAMPLE_SECONDS = 30.0, 10.0
SIDES = {
    "ours": {},
    "glibc defaults": {"MALLOC_ARENA_MAX": str(8 * (os.cpu_count() or 1))},
}


def heap_figures(srv: Server) -> str:
    """The server's allocators from ``/metrics``, in a few words."""
    samples = metric_samples(srv.port)
    parts = {s.labels["part"]: s.value for s in samples if s.name == "para_attn_heap_bytes"}
    blocks = next((s.value for s in samples if s.name == "para_attn_python_blocks"), 0.0)
    return ", ".join(f"{part} {value / MIB:.1f} MiB" for part, value in parts.items()) + f"; {blocks:.0f} Python blocks"


def allocator(report: Report, quick: bool, minutes: float | None = None) -> None:
    minutes = minutes if minutes is not None else (QUICK_MINUTES if quick else MINUTES)
    interval = QUICK_SAMPLE_SECONDS if quick else SAMPLE_SECONDS
    with contextlib.ExitStack() as stack:
        servers = {}
        for side, env in SIDES.items():
            tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="para-attn-bench-")))
            cli = ["--model", "noop", "--num-devices", "2", "--log-level", "INFO", *SERVER_ARGS]
            servers[side] = stack.enter_context(Server(cli, tmp, env=server_env(**env)))

        async def both() -> list[tuple[Load, list[Sample]]]:
            return await asyncio.gather(*(drive(srv, minutes * 60, interval) for srv in servers.values()))

        results = asyncio.run(both())
        slopes = {}
        for (side, srv), (load, samples) in zip(servers.items(), results, strict=True):
            warm_from = samples[-1].t / 4
            kept = [(s.t, s.jobs, s.processes["server"].rss_bytes / MIB) for s in samples if s.t >= warm_from]
            slopes[side] = per = slope(kept)
            first, last = kept[0][2], kept[-1][2]
            report.add(SUITE, f"server RSS slope: {side}", per, "MiB/100k jobs",
                       f"{load.jobs} jobs, {load.errors} errors; RSS {first:.1f} -> {last:.1f} MiB after warm-up; "
                       f"at the end {heap_figures(srv)}", jobs=load.jobs, errors=load.errors, start=first, end=last,
                       samples=[s.processes["server"].rss_bytes for s in samples])  # fmt: skip
    gain = slopes["glibc defaults"] - slopes["ours"]
    report.add(SUITE, "slope: glibc defaults - ours", gain, "MiB/100k jobs", "side by side, same minutes, same load")
