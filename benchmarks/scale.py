"""The scale suite: one group of 2 ranks against two groups of 1 rank (``--group-size 1``).

The predictor is ``noop`` with ``steps`` steps that each sleep ``step_seconds``: a job's time
is mostly sleep, so the machine's 2 cores are not the limit and what is measured is how many
jobs the server runs at once. 4 concurrent clients each submit jobs back to back
(``POST /v1/jobs?wait=60``); then 1 client alone, for each layout's latency without a queue.

Targets (issue 9): 2 groups give >= 1.9x the jobs/s of 1 group under 4 clients, and a single
client's p50 is no higher with 2 groups than with 1.
"""

from __future__ import annotations

import asyncio
import json

from .harness import Report, Stat, drive_wait_jobs, server

SUITE = "scale"
CLIENTS = 4
STEPS, STEP_SECONDS = 10, 0.02  # a 0.2 s job
MIN_SPEEDUP = 1.9
LAYOUTS = {"1 group of 2": [], "2 groups of 1": ["--group-size", "1"]}  # of 2 ranks
BODY = json.dumps({"size": 1024, "steps": STEPS, "step_seconds": STEP_SECONDS}).encode()


def scale(report: Report, quick: bool) -> None:
    per_client = 5 if quick else 20
    alone = 10 if quick else 40
    jobs_s: dict[str, float] = {}
    p50_alone: dict[str, float] = {}
    for name, args in LAYOUTS.items():
        with server("noop", 2, *args) as srv:
            # Warm-up: a job per client, so every group has run one.
            rate, latencies = asyncio.run(drive_wait_jobs(srv.port, BODY, CLIENTS, per_client, (CLIENTS, 1)))
            s = Stat.of(latencies)
            jobs_s[name] = rate
            report.add(SUITE, f"{name}, {CLIENTS} clients", rate, "jobs/s",
                       f"latency p50 {s.median * 1e3:.1f} ms p90 {s.p90 * 1e3:.1f} ms", latency=vars(s))  # fmt: skip
            _, latencies = asyncio.run(drive_wait_jobs(srv.port, BODY, 1, alone, (1, 1)))
            s = Stat.of(latencies)
            p50_alone[name] = s.median
            report.add(SUITE, f"{name}, 1 client", s.median, "s", s.ms(), stat=vars(s))
    one, two = LAYOUTS
    speedup = jobs_s[two] / jobs_s[one]
    passed = speedup >= MIN_SPEEDUP
    report.add(SUITE, f"jobs/s: {two} / {one}", speedup, "x",
               f"target >= {MIN_SPEEDUP}x: {'PASS' if passed else 'FAIL'}",
               target=MIN_SPEEDUP, passed=passed)  # fmt: skip
    ratio = p50_alone[two] / p50_alone[one]
    passed = p50_alone[two] <= p50_alone[one]
    report.add(SUITE, f"1-client p50: {two} / {one}", ratio, "x",
               f"{p50_alone[two] * 1e3:.1f} ms vs {p50_alone[one] * 1e3:.1f} ms; target <= 1x: "
               f"{'PASS' if passed else 'FAIL'}", target=1.0, passed=passed)  # fmt: skip
    print(f"  ({STEPS} steps of {STEP_SECONDS * 1e3:.0f} ms per job, noop predictor)", flush=True)
