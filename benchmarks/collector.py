"""``--only collector``: what one full collection of Python's cyclic collector costs the
server's event loop, before and after ``allocator.settle()`` freezes what start-up left.

- In a fresh process holding the server process's imports (the CLI, the plugins, torch,
  litestar): the objects a full collection walks and its median time over 5; then how many
  ``settle()`` froze. Before it every full collection walked these, on top of what jobs keep.
- On a live server (``noop``, 2 ranks, settled) after a few seconds of the soak's load: the
  idle collection it ran once quiet, as ``/metrics`` shows it
  (``para_attn_idle_collection_seconds``), which walks what its jobs keep and no more.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time

from para_attn_server.testing import Server

from .harness import Report, metric_samples, server
from .soak import SERVER_ARGS, drive

SUITE = "collector"
LOAD_SECONDS = 5.0
PROBE = """
import gc, json, statistics, time
import litestar, torch
import para_attn_server.cli
from para_attn_server import allocator
from para_attn_server.plugin.manager import Plugins

Plugins.load()  # the installed plugins, as the server loads them


times = []
for _ in range(5):
    start = time.perf_counter()
    gc.collect()
    times.append(time.perf_counter() - start)
walked = len(gc.get_objects())
allocator.settle()
print(json.dumps({"seconds": statistics.median(times), "objects": walked, "frozen": gc.get_freeze_count()}))
"""


def collector(report: Report, quick: bool) -> None:
    done = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, check=True)
    probe = json.loads(done.stdout)
    report.add(SUITE, "full collection over the server's imports", probe["seconds"], "s",
               f"walks {probe['objects']:,} objects; settle() freezes {probe['frozen']:,}", **probe)  # fmt: skip
    with server("noop", 2, *SERVER_ARGS) as srv:
        load, _ = asyncio.run(drive(srv, LOAD_SECONDS, LOAD_SECONDS))
        seconds = _idle_collection(srv)
    report.add(SUITE, "a live server's idle collection", seconds, "s",
               f"noop, 2 ranks, after {load.jobs} jobs of the soak's load (/metrics)")  # fmt: skip


def _idle_collection(srv: Server, timeout: float = 60.0) -> float:
    """Once the server ran its idle collection (a second or two after the load): its seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        figures = {s.name: s.value for s in metric_samples(srv.port) if s.name.startswith("para_attn_idle")}
        if figures.get("para_attn_idle_collections_total", 0) >= 1:
            return figures["para_attn_idle_collection_seconds"]
        time.sleep(0.2)
    raise TimeoutError(f"no idle collection within {timeout:g} s")
