"""The benchmark suites. Each takes the report and a ``quick`` flag and adds rows."""

from __future__ import annotations

import asyncio
import json
import statistics
import time
from typing import Any

from .allocator import allocator
from .batching import batching
from .collector import collector
from .compare import compare
from .direct import DirectRanks
from .fleet import fleet
from .gpu import gpu
from .harness import Client, Report, Stat, client, drive_wait_jobs, server, timed
from .inputs import inputs as picture_inputs
from .layouts import layouts
from .loras import loras
from .micro import micro
from .scale import scale
from .soak import soak

OCTET = {"accept": "application/octet-stream"}
# Targets of the rows that state one (issue 11). Comparisons with the original server come
# from the compare suite only, measured in the same run.
TINY_SERVED_MAX_RATIO = 1.05  # tiny Flux through the server, over the direct call
STEP_HOOK_MAX_SHARE = 0.01  # the step hook's cost, as a share of a tiny-Flux step
PREVIEW_MAX_RATIO = 1.02  # a tiny-Flux job with a preview at every step, over the same job without


def verdict(passed: bool) -> str:
    return "PASS" if passed else "FAIL"


def floor(client: Client, n: int) -> tuple[Stat, Stat]:
    one = Stat.of(timed(lambda: client.request("GET", "/health/live"), n))
    pair = Stat.of(timed(lambda: (client.request("GET", "/health/live"), client.request("GET", "/health/live")), n))
    return one, pair


def sync_job(client: Client, body: bytes) -> None:
    status, _ = client.request("POST", "/v1/jobs?wait=60", body, OCTET)
    assert status == 201, status


def submit_then_download(client: Client, body: bytes) -> bytes:
    job = client.json("POST", "/v1/jobs", json.loads(body), expect=201)
    status, data = client.request("GET", f"/v1/jobs/{job['id']}/output?wait=60")
    assert status == 200, status
    return data


def original_polling(client: Client, body: bytes, interval: float = 0.001) -> bytes:
    status, data = client.request("POST", "/generate", body)
    assert status == 202, status
    request_id = json.loads(data)["request_id"]
    while True:
        status, data = client.request("GET", f"/get_output/{request_id}")
        if status == 200:
            return data
        assert status == 202, status
        time.sleep(interval)


# ---- 1 + 4 + 5: latency, overhead vs direct, original client ------------------------------


def latency(report: Report, quick: bool) -> None:
    n = 200 if quick else 1000
    with server("noop", 2) as srv:
        c = client(srv)
        one, pair = floor(c, n)
        report.add("floor", "1 request  (GET /health/live)", one.median, "s", one.ms(), stat=vars(one))
        report.add("floor", "2 requests (GET /health/live x2)", pair.median, "s", pair.ms(), stat=vars(pair))
        body = b'{"size": 1024}'
        s = Stat.of(timed(lambda: sync_job(c, body), n))
        report.add("latency", "no-op, 1 request (POST ?wait, Accept bytes)", s.median, "s",
                   f"{s.ms()}  +{(s.median - one.median) * 1e3:.3f} ms over floor", stat=vars(s))  # fmt: skip
        s = Stat.of(timed(lambda: submit_then_download(c, body), n))
        report.add("latency", "no-op, POST then GET output?wait", s.median, "s",
                   f"{s.ms()}  +{(s.median - pair.median) * 1e3:.3f} ms over floor", stat=vars(s))  # fmt: skip
        s = Stat.of(timed(lambda: original_polling(c, body), n // 2))
        report.add("latency", "no-op, original client (poll every 1 ms)", s.median, "s", s.ms(), stat=vars(s))


def overhead(report: Report, quick: bool) -> None:
    """Direct calls and calls through the server, in interleaved rounds on ranks that
    stay up for both (the machine's speed drifts: only interleaved rounds compare)."""
    cases: list[tuple[str, dict[str, Any], int]] = [
        ("noop", {"size": 1024}, 100 if quick else 300),
        ("tiny", {"prompt": "a cat"}, 4 if quick else 10),
    ]
    rounds = 3
    for world in (1, 2):
        for model, inputs, n in cases:
            body = json.dumps(inputs).encode()
            direct_times: list[float] = []
            served_times: list[float] = []
            with DirectRanks(model, world, inputs) as direct, server(model, world) as srv:
                c = client(srv)
                direct.run(3)
                timed(lambda: sync_job(c, body), 0, warmup=3)  # noqa: B023
                for _ in range(rounds):
                    direct_times += direct.run(n)
                    served_times += timed(lambda: sync_job(c, body), n, warmup=0)  # noqa: B023
            _overhead_rows(report, model, world, Stat.of(direct_times), Stat.of(served_times), rounds)


def _overhead_rows(report: Report, model: str, world: int, direct: Stat, served: Stat, rounds: int) -> None:
    added = served.median - direct.median
    ratio = served.median / direct.median
    name = f"{model}, {world} rank(s)"
    report.add("overhead", f"{name}: direct call", direct.median, "s", f"{direct.ms()}  {rounds} interleaved rounds",
               stat=vars(direct))  # fmt: skip
    detail = f"{served.ms()}  x{ratio:.3f} the direct call, +{added * 1e3:.3f} ms"
    extra: dict[str, object] = {}
    if model == "tiny":  # a no-op's ratio only restates the added milliseconds
        extra = {"target": TINY_SERVED_MAX_RATIO, "passed": ratio <= TINY_SERVED_MAX_RATIO}
        detail += f"; target <= x{TINY_SERVED_MAX_RATIO}: {verdict(ratio <= TINY_SERVED_MAX_RATIO)}"
    report.add("overhead", f"{name}: through the server", served.median, "s", detail, stat=vars(served), ratio=ratio,
               **extra)  # fmt: skip


# ---- 2: throughput ----------------------------------------------------------------------


def throughput(report: Report, quick: bool) -> None:
    total = 400 if quick else 2000
    with server("noop", 2, "--max-queue", "256") as srv:
        for clients in (1, 8, 32):
            per_client = total // clients
            warmup = (min(clients, 4), per_client)
            jobs_s, lat = asyncio.run(drive_wait_jobs(srv.port, b'{"size": 1024}', clients, per_client, warmup))
            s = Stat.of(lat)
            report.add("throughput", f"no-op, {clients} concurrent client(s)", jobs_s, "jobs/s",
                       f"latency p50 {s.median * 1e3:.2f} ms p90 {s.p90 * 1e3:.2f} ms p99 {s.p99 * 1e3:.2f} ms",
                       latency=vars(s))  # fmt: skip


# ---- 3: payload -------------------------------------------------------------------------


def payload(report: Report, quick: bool) -> None:
    sizes = [("1 KiB", 1 << 10), ("1 MiB", 1 << 20), ("16 MiB", 16 << 20), ("64 MiB", 64 << 20)]
    with server("noop", 2) as srv:
        c = client(srv)
        for label, size in sizes:
            n = 10 if size >= 16 << 20 else (50 if quick else 200)
            body = json.dumps({"size": size}).encode()
            s = Stat.of(timed(lambda: submit_then_download(c, body), n, warmup=2))  # noqa: B023
            report.add("payload", f"{label}: binary download", s.median, "s", s.ms(), stat=vars(s))
            s = Stat.of(timed(lambda: original_polling(c, body), n, warmup=2))  # noqa: B023
            report.add("payload", f"{label}: original base64 JSON (/get_output)", s.median, "s", s.ms(), stat=vars(s))


# ---- 4: cancel latency ------------------------------------------------------------------


def cancel(report: Report, quick: bool) -> None:
    step = 0.02
    n = 10 if quick else 30
    with server("noop", 2) as srv:
        c, watcher = client(srv), client(srv)
        samples = []
        for _ in range(n):
            job = c.json("POST", "/v1/jobs", {"size": 16, "steps": 100_000, "step_seconds": step}, expect=201)
            _wait_for_step(srv.port, job["id"], 3)
            start = time.perf_counter()
            c.json("POST", f"/v1/jobs/{job['id']}/cancel", expect=200)
            state = watcher.json("GET", f"/v1/jobs/{job['id']}?wait=30")["state"]
            samples.append(time.perf_counter() - start)
            assert state == "cancelled", state
        s = Stat.of(samples)
        target = f"target: one step + 20 ms = {(step + 0.02) * 1e3:.0f} ms"
        report.add(
            "cancel", f"no-op, 2 ranks, {step * 1e3:.0f} ms steps", s.median, "s", f"{s.ms()}  {target}", stat=vars(s)
        )


def _wait_for_step(port: int, job_id: str, step: int) -> None:
    """Block on the job's SSE stream until it reports ``step``."""
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", port)
    conn.request("GET", f"/v1/jobs/{job_id}/events")
    response = conn.getresponse()
    event = ""
    for raw in response:
        line = raw.decode().strip()
        if line.startswith("event:"):
            event = line.split(":", 1)[1].strip()
        elif line.startswith("data:") and event == "progress" and json.loads(line[5:])["step"] >= step:
            break
    conn.close()


# ---- 5: progress cost -------------------------------------------------------------------


def progress(report: Report, quick: bool) -> None:
    steps = 2000 if quick else 10000
    with server("noop", 2) as srv:
        c = client(srv)
        per_step = {}
        for hook in (False, True):
            body = json.dumps({"size": 16, "steps": steps, "step_hook": hook}).encode()
            s = Stat.of(timed(lambda: sync_job(c, body), 5, warmup=1))  # noqa: B023
            per_step[hook] = s.median / steps
        cost = (per_step[True] - per_step[False]) * 1e6
        report.add(
            "progress", "step hook (progress + cancel decision), 2 ranks", cost, "us", "per step", per_step=per_step
        )
    with server("tiny", 2) as srv:
        c = client(srv)
        body = json.dumps({"prompt": "a cat", "num_inference_steps": 20}).encode()
        s = Stat.of(timed(lambda: sync_job(c, body), 5, warmup=1))
        step_time = s.median / 20
        share = cost / (step_time * 1e6)
        passed = share < STEP_HOOK_MAX_SHARE
        report.add("progress", "tiny Flux step time, 2 ranks", step_time * 1e6, "us",
                   f"hook cost = {share * 100:.2f}% of a step; target < {STEP_HOOK_MAX_SHARE:.0%}: {verdict(passed)}",
                   share=share, target=STEP_HOOK_MAX_SHARE, passed=passed)  # fmt: skip
        previews(report, c, [srv.process.pid, *srv.rank_pids()], 10 if quick else 30)


def previews(report: Report, c: Client, pids: list[int], pairs: int) -> None:
    """The same 20-step tiny-Flux job with previews off and at every step, run in turns so
    that a change in the machine's load falls on both alike; and the CPU time the server
    and its ranks spent on each (less swayed by other people's load than the clock)."""
    import psutil

    processes = [psutil.Process(pid) for pid in pids]

    def cpu() -> float:
        return sum(sum(p.cpu_times()[:2]) for p in processes)

    steps = 20
    bodies = {
        every: json.dumps({"prompt": "a cat", "num_inference_steps": steps, "preview_every": every}).encode()
        for every in (0, 1)
    }
    times: dict[int, list[float]] = {0: [], 1: []}
    cpus: dict[int, list[float]] = {0: [], 1: []}
    for body in bodies.values():
        timed(lambda: sync_job(c, body), 0, warmup=2)  # noqa: B023
    for _ in range(pairs):
        for every, body in bodies.items():
            before = cpu()
            times[every] += timed(lambda: sync_job(c, body), 1, warmup=0)  # noqa: B023
            cpus[every].append(cpu() - before)
    off, on = Stat.of(times[0]), Stat.of(times[1])
    ratio = on.median / off.median
    passed = ratio <= PREVIEW_MAX_RATIO
    cpu_off, cpu_on = (statistics.median(cpus[every]) / steps * 1e6 for every in (0, 1))
    report.add("progress", "tiny Flux step, previews off, 2 ranks", off.median / steps * 1e6, "us",
               f"per step; job {off.ms()}; CPU {cpu_off:.0f} µs per step (server and ranks)",
               stat=vars(off), cpu_per_step_us=cpu_off)  # fmt: skip
    report.add("progress", "tiny Flux step, a preview every step, 2 ranks", on.median / steps * 1e6, "us",
               f"per step; job {on.ms()}; CPU {cpu_on:.0f} µs per step ({cpu_on - cpu_off:+.0f}); "
               f"x{ratio:.3f} the job without; target <= x{PREVIEW_MAX_RATIO}: {verdict(passed)}",
               stat=vars(on), cpu_per_step_us=cpu_on, ratio=ratio, target=PREVIEW_MAX_RATIO, passed=passed)  # fmt: skip


SUITES = {
    "latency": latency,
    "overhead": overhead,
    "throughput": throughput,
    "payload": payload,
    "cancel": cancel,
    "progress": progress,
    "gpu": gpu,
    "compare": compare,
    "scale": scale,
    "micro": micro,
    "inputs": picture_inputs,
    "loras": loras,
    "batching": batching,
    "fleet": fleet,
    "layouts": layouts,
    "soak": soak,
    "soak-allocator": allocator,
    "collector": collector,
}
# Run only when named in --only (a soak takes 20 minutes), never by default.
ON_REQUEST = ("soak", "soak-allocator")
