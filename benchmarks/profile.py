"""Where a job's time goes: ``python -m benchmarks.profile CASE [--jobs N] [--original-git DIR]``.

Starts one server, runs N jobs through the same client as the compare suite, and reports for
the server process, each rank and the client: CPU per job (from the kernel's per-process and
per-thread counters, exact) and, from py-spy, the share of each process's busy samples per
frame (self and inclusive). py-spy samples without pausing the processes (``--nonblocking``):
pausing them (needed for ``--native``) tripled a 1 KiB job's time here.

CASE: orig-1k / orig-16m (ours, /generate + poll every 1 ms), native-1k / native-16m (ours,
POST /v1/jobs?wait), original-1k / original-16m (the original server, CPU only: its ranks are
not told apart), tiny-1 (tiny Flux on 1 rank, POST /v1/jobs?wait). Needs the bench extra.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import os
import re
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from .compare import Running, native_job, original_job, running
from .harness import client, server, timed
from .original import original_package
from .same_predictor import KIB, MIB
from .suites import sync_job

RATE = 100  # samples per second


def _py_spy() -> str:
    import shutil
    import sys

    return shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")


def processes(server_pid: int, status: dict[str, Any]) -> dict[str, int]:
    """The server, its rank processes and us. Ours names each rank's pid in
    ``/server_status`` (its ranks fork from a fork server: grandchildren of the server);
    the original's spawned ranks are told apart by their command line only."""
    import psutil

    named = {"server": server_pid, "client": os.getpid()}
    rows = status.get("ranks")
    if isinstance(rows, list) and rows and "pid" in rows[0]:
        named.update({f"rank{row['rank']}": row["pid"] for row in rows if row.get("pid")})
        return named
    children = psutil.Process(server_pid).children(recursive=True)
    ranks = [p.pid for p in children if "spawn_main" in " ".join(p.cmdline())]
    named.update({f"rank process {i}": pid for i, pid in enumerate(sorted(ranks))})
    return named


def cpu_seconds(pids: dict[str, int]) -> dict[str, tuple[float, dict[int, float]]]:
    import psutil

    out = {}
    for name, pid in pids.items():
        proc = psutil.Process(pid)
        times = proc.cpu_times()
        out[name] = (times.user + times.system, {t.id: t.user_time + t.system_time for t in proc.threads()})
    return out


def profile(
    server_pid: int, job: Callable[[], object], status: dict[str, Any], jobs: int, outdir: Path, spy: bool
) -> None:
    timed(job, 5, warmup=5)
    pids = processes(server_pid, status)
    spies = []
    if spy:
        for name, pid in pids.items():
            cmd = [_py_spy(), "record", "--pid", str(pid), "--rate", str(RATE), "--format", "raw", "--threads",
                   "--nonblocking", "-o", str(outdir / f"{name}.txt")]  # fmt: skip
            spies.append(subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        time.sleep(2)  # let py-spy attach
    before = cpu_seconds(pids)
    start = time.perf_counter()
    latencies = sorted(timed(job, jobs, warmup=0))
    wall = time.perf_counter() - start
    after = cpu_seconds(pids)
    for process in spies:
        process.send_signal(signal.SIGINT)  # py-spy writes its file on SIGINT
    for process in spies:
        process.wait(60)
    print(f"{jobs} jobs in {wall:.2f} s, p50 {latencies[len(latencies) // 2] * 1e3:.3f} ms")
    for name in pids:
        total = after[name][0] - before[name][0]  # counts threads that ended, too
        threads = {tid: t - before[name][1].get(tid, 0.0) for tid, t in after[name][1].items()}
        top = sorted(threads.items(), key=lambda kv: -kv[1])[:4]
        print(f"\n-- {name}: {total / jobs * 1e3:.3f} ms CPU per job ({total / wall:.0%} of one core); by thread id: "
              + ", ".join(f"{tid} {t / jobs * 1e3:.3f}" for tid, t in top))  # fmt: skip
        if spy and (outdir / f"{name}.txt").exists():
            print(shares((outdir / f"{name}.txt").read_text()))


def shares(collapsed: str, top: int = 12) -> str:
    """Self and inclusive shares of the busy samples in py-spy's raw (collapsed) output."""
    own: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    threads: collections.Counter[str] = collections.Counter()
    total = 0
    for line in collapsed.splitlines():
        stack, _, count = line.rpartition(" ")
        frames = [re.sub(r" \((?:.*/)?([^/:]+)(?::\d+)?\)$", r" (\1)", f) for f in stack.split(";")]
        n = int(count)
        total += n
        threads[frames[0]] += n
        own[frames[-1]] += n
        for frame in set(frames[1:]):
            inclusive[frame] += n
    if not total:
        return "   no busy samples"
    lines = ["   threads: " + ", ".join(f"{t} {c / total:.0%}" for t, c in threads.most_common(4)), "   self:"]
    lines += [f"     {c / total:6.1%}  {f}" for f, c in own.most_common(top)]
    lines += ["   inclusive:"] + [f"     {c / total:6.1%}  {f}" for f, c in inclusive.most_common(top + 8)]
    return "\n".join(lines)


@contextlib.contextmanager
def started(
    case: str, original_git: str | None, workdir: Path
) -> Iterator[tuple[int, Callable[[], object], dict[str, Any]]]:
    """The server's pid, one job of ``case`` and the server's ``/server_status``."""
    import psutil

    if case == "tiny-1":
        with server("tiny", 1) as tiny:
            connection, body = client(tiny), json.dumps({"prompt": "a cat"}).encode()
            yield tiny.process.pid, lambda: sync_job(connection, body), connection.json("GET", "/server_status")
        return
    endpoints, _, size_name = case.partition("-")
    size = {"1k": KIB, "16m": 16 * MIB}[size_name]
    kind = "original" if endpoints == "original" else "ours"
    with contextlib.ExitStack() as stack:
        original_dir = stack.enter_context(original_package(original_git)) if original_git else workdir
        srv: Running = stack.enter_context(running(kind, original_dir, workdir))
        pid = next(p.pid for p in psutil.Process().children() if "benchmarks.serve" in " ".join(p.cmdline()))
        job: Callable[[], Any] = (
            (lambda: native_job(srv.client, size)) if endpoints == "native" else (lambda: original_job(srv, size))
        )
        yield pid, job, srv.client.get("/server_status").json()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.profile", description=__doc__)
    cases = ["orig-1k", "orig-16m", "native-1k", "native-16m", "original-1k", "original-16m", "tiny-1"]
    parser.add_argument("case", choices=cases)
    parser.add_argument("--jobs", type=int, default=300)
    parser.add_argument("--original-git", default=os.environ.get("PARA_ATTN_BENCH_ORIGINAL_GIT"))
    parser.add_argument("--out", default=None, help="keep py-spy's files here (default: a temporary directory)")
    args = parser.parse_args()
    if args.case.startswith("original") and not args.original_git:
        parser.error("the original server needs --original-git DIR")
    with tempfile.TemporaryDirectory(prefix="para-attn-profile-") as tmp:
        outdir = Path(args.out or tmp)
        outdir.mkdir(parents=True, exist_ok=True)
        with started(args.case, args.original_git, Path(tmp)) as (pid, job, status):
            profile(pid, job, status, args.jobs, outdir, spy=not args.case.startswith("original"))


if __name__ == "__main__":
    main()
