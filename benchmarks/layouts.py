"""``--only layouts``: CFG-parallel against Ulysses on the same 2 ranks, for a guided model.

Two servers in the same run, each the tiny Wan (saved by ``make_tiny`` to a temporary
directory) on 2 ranks: one with ``-o cfg=2`` (each rank runs one of the guided and unguided
passes of every step, whole), one with ``-o ulysses=2`` (both ranks run both passes, each on
half of the tokens). The job is guided (``guidance_scale`` 5), 96x96, 9 frames, 4 steps.
Rounds are interleaved and alternate which server goes first; each round times ``JOBS`` jobs
one after the other (``POST /v1/jobs?wait``) on each. The ratio is of the medians (Ulysses
over CFG: above 1, CFG-parallel is faster). On this CPU the difference is what the two
layouts communicate (gloo over loopback: one all-gather of the output per step against an
all-to-all per attention layer), not what a GPU would see.
"""

from __future__ import annotations

import functools
import json
import subprocess
import sys
import tempfile
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from .harness import Client, Report, Stat, client, server, timed

SUITE = "layouts"
LAYOUTS = {"cfg=2": ["-o", "cfg=2"], "ulysses=2": ["-o", "ulysses=2"]}
FIELDS: dict[str, Any] = {
    "prompt": "a cat dancing", "negative_prompt": "blurry", "width": 96, "height": 96, "num_frames": 9,
    "num_inference_steps": 4, "guidance_scale": 5.0, "seed": 1, "output_format": "npy",
}  # fmt: skip
JOBS = 3  # per round and server


def job(c: Client, body: bytes) -> None:
    status, data = c.request("POST", "/v1/jobs?wait=120", body, {"accept": "application/octet-stream"})
    assert status == 201, (status, data[:300])


def layouts(report: Report, quick: bool) -> None:
    rounds = 2 if quick else 5
    body = json.dumps(FIELDS).encode()
    with tempfile.TemporaryDirectory(prefix="para-attn-bench-wan-") as tmp, ExitStack() as stack:
        path = Path(tmp, "wan")
        subprocess.run([sys.executable, "-m", "para_attn_predictors.make_tiny", "wan", str(path)], check=True,
                       capture_output=True)  # fmt: skip
        common = ["--model-path", str(path), "-o", "max_sequence_length=16"]
        clients = {
            name: client(stack.enter_context(server("wan", 2, *common, *args))) for name, args in LAYOUTS.items()
        }
        times: dict[str, list[float]] = {name: [] for name in LAYOUTS}
        for round_index in range(rounds):
            order = list(LAYOUTS) if round_index % 2 == 0 else list(reversed(LAYOUTS))
            for name in order:
                times[name] += timed(functools.partial(job, clients[name], body), JOBS, warmup=1)
    stats = {name: Stat.of(samples) for name, samples in times.items()}
    for name, stat in stats.items():
        report.add(SUITE, f"tiny Wan guided, 2 ranks, {name}", stat.median, "s", stat.ms(), stat=vars(stat))
    ratio = stats["ulysses=2"].median / stats["cfg=2"].median
    report.add(SUITE, "ulysses=2 / cfg=2 (job time)", ratio, "x",
               f"{'CFG-parallel faster' if ratio > 1 else 'Ulysses faster'} on this machine, same run")  # fmt: skip
