"""The gpu suite: FLUX.1-dev's shape on one card, direct and through the server (benchmarks/gpu.sh).

Each row is the median of a few jobs after one warm-up job, on one rank, with the card's name:

    direct   the flux predictor called in one process, no server (the baseline)
    server   the same model through para-attn-server
    cache    the server with -o cache_threshold=0.08 (first-block cache)
    fp8      the server with -o fp8=1 (torchao float8): a server that refuses to start shows why
    compile  the server with -o compile=1 (compiled by a warm-up before ready); last, as its
             compile takes longest and the time budget cuts whatever is left

The pipeline (``benchmarks.flux_dev``: random bf16 weights, no download) is built and saved
once, in /dev/shm when it has room (~24 GB, read by five processes), and removed afterwards.

    PARA_ATTN_BENCH_GPU_SHAPE=tiny    a dry run: tiny Flux at 64x64, 4 steps (on CPU without CUDA)
    PARA_ATTN_BENCH_FLUX_PATH=DIR     a saved Flux pipeline to use instead of building one
    PARA_ATTN_BENCH_GPU_BUDGET=S      seconds for the suite (420): a config with too little left is skipped
    PARA_ATTN_BENCH_GPU_TMP=DIR       where the built pipeline is saved
    PARA_ATTN_BENCH_GPU_COMPILE=1     the compile row in the dry run too (inductor takes minutes on a CPU)
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import FrameType
from typing import Any

from .harness import ROOT, Report, Stat

SHAPE_ENV = "PARA_ATTN_BENCH_GPU_SHAPE"
WARMUP_JOBS = 1


@dataclass(frozen=True)
class Shape:
    name: str  # benchmarks.flux_dev's --shape
    label: str
    width: int
    height: int
    steps: int
    options: dict[str, str]  # every config's -o options
    min_start_s: float  # a config that would start with less of the budget left is skipped
    room_bytes: int  # what the saved pipeline takes: /dev/shm holds it when it has this much free


FLUX_DEV = Shape("flux-dev", "FLUX.1-dev shape, random bf16 weights", 1024, 1024, 28, {"dtype": "bfloat16"},
                 60, 26 << 30)  # fmt: skip
TINY = Shape("tiny", "tiny Flux (dry run)", 64, 64, 4, {"max_sequence_length": "64"}, 10, 0)


@dataclass(frozen=True)
class Config:
    name: str
    label: str
    options: dict[str, str]


CONFIGS = (
    Config("server", "server, 1 rank", {}),
    Config("cache", "server, first-block cache 0.08", {"cache_threshold": "0.08"}),
    Config("fp8", "server, fp8 (torchao float8)", {"fp8": "1"}),
    Config("compile", "server, torch.compile", {"compile": "1"}),
)


@dataclass
class Outcome:
    """A config's timed jobs, or why there are none (status "failed" or "skipped")."""

    times: list[float] = field(default_factory=list)
    status: str = "ok"
    reason: str = ""


class Budget:
    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.deadline = time.monotonic() + seconds

    def left(self) -> float:
        return self.deadline - time.monotonic()


class JobError(Exception):
    """A job that did not succeed; its message says why."""


def gpu(report: Report, quick: bool) -> None:
    import torch

    shape = {"flux-dev": FLUX_DEV, "tiny": TINY}.get(os.environ.get(SHAPE_ENV, "flux-dev"))
    if shape is None:
        raise ValueError(f"{SHAPE_ENV} must be flux-dev or tiny, not {os.environ[SHAPE_ENV]!r}")
    cuda = torch.cuda.is_available()
    if not cuda and shape is not TINY:
        print(f"  gpu         skipped: no CUDA device ({SHAPE_ENV}=tiny runs the dry run on CPU)", flush=True)
        return
    given = os.environ.get("PARA_ATTN_BENCH_FLUX_PATH") if shape is FLUX_DEV else None
    if given:
        shape = replace(shape, label=f"the Flux pipeline in {given}")
    device = "cuda" if cuda else "cpu"
    card = torch.cuda.get_device_name(0) if cuda else cpu_name()
    jobs = 2 if quick else 3
    budget = Budget(float(os.environ.get("PARA_ATTN_BENCH_GPU_BUDGET", "420")))
    inputs = {"prompt": "a lighthouse at dusk", "width": shape.width, "height": shape.height,
              "num_inference_steps": shape.steps, "seed": 0, "output_format": "png"}  # fmt: skip
    case = f"{shape.width}x{shape.height} {shape.steps} steps"
    meta = {"card": card, "device": device, "shape": shape.label, "jobs": jobs, "warmup_jobs": WARMUP_JOBS}
    outcomes: dict[str, Outcome] = {}
    with _sigterm_interrupts(), model_dir(shape, device, budget, given) as path:
        outcomes["direct"] = direct(path, shape.options, inputs, device, jobs, budget)
        direct_meta = {**meta, "config": "direct"}
        direct_median = _add_row(
            report, f"{case}: direct diffusers", outcomes["direct"], None, direct_meta, shape.options
        )
        for config in CONFIGS:
            options = {**shape.options, **config.options}
            if config.name == "compile":  # compile for the size the jobs ask for
                options["warmup"] = json.dumps({"width": shape.width, "height": shape.height})
            outcome = skipped(config, shape, budget) or served(path, options, inputs, jobs, budget)
            outcomes[config.name] = outcome
            _add_row(report, f"{case}: {config.label}", outcome, direct_median, {**meta, "config": config.name},
                     options)  # fmt: skip
    print(summary(shape, card, jobs, outcomes), flush=True)


def skipped(config: Config, shape: Shape, budget: Budget) -> Outcome | None:
    """Why ``config`` is not run, or None."""
    if config.name == "compile" and shape is TINY and os.environ.get("PARA_ATTN_BENCH_GPU_COMPILE") != "1":
        return Outcome(status="skipped", reason="not in the dry run (inductor takes minutes on a CPU)")
    if budget.left() < shape.min_start_s:
        return Outcome(
            status="skipped", reason=f"only {max(budget.left(), 0):.0f} s of the {budget.seconds:.0f} s budget left"
        )
    return None


def _add_row(
    report: Report, case: str, outcome: Outcome, direct_median: float | None, meta: dict[str, Any],
    options: dict[str, str],
) -> float | None:  # fmt: skip
    """The row of one config (None where nothing was measured); its median."""
    if not outcome.times:
        report.add("gpu", case, None, "s", f"{outcome.status}: {outcome.reason}  [{meta['card']}]",
                   status=outcome.status, reason=outcome.reason, options=options, **meta)  # fmt: skip
        return None
    stat = Stat.of(outcome.times)
    ratio = stat.median / direct_median if direct_median else None
    versus = f"  x{ratio:.3f} the direct call" if ratio is not None else ""
    report.add("gpu", case, stat.median, "s", f"{stat.ms()}{versus}  [{meta['card']}]", status="ok",
               ratio=ratio, stat=vars(stat), options=options, **meta)  # fmt: skip
    return stat.median


def summary(shape: Shape, card: str, jobs: int, outcomes: dict[str, Outcome]) -> str:
    """A Markdown table of the run, headed by the card's name."""
    labels = {"direct": "direct diffusers, no server", **{c.name: c.label for c in CONFIGS}}
    base = Stat.of(outcomes["direct"].times).median if outcomes["direct"].times else None
    lines = [
        f"\n{card}: {shape.label}, {shape.width}x{shape.height}, {shape.steps} steps, 1 rank, "
        f"median of {jobs} jobs after {WARMUP_JOBS} warm-up",
        "",
        "| config | median | vs direct | note |",
        "|---|---:|---:|---|",
    ]
    for name, outcome in outcomes.items():
        if outcome.times:
            median = Stat.of(outcome.times).median
            ratio = f"x{median / base:.3f}" if base else ""
            lines.append(f"| {labels[name]} | {median:.3f} s | {ratio} | |")
        else:
            lines.append(f"| {labels[name]} | | | {outcome.status}: {outcome.reason} |")
    return "\n".join(lines)


# ---- the model ----------------------------------------------------------------------------


@contextlib.contextmanager
def model_dir(shape: Shape, device: str, budget: Budget, given: str | None = None) -> Iterator[str]:
    """A directory holding the pipeline of ``shape``: ``given``, or one built and saved here,
    removed afterwards."""
    if given:
        yield given
        return
    parent = os.environ.get("PARA_ATTN_BENCH_GPU_TMP") or _roomy_shm(shape.room_bytes)
    with tempfile.TemporaryDirectory(prefix="para-attn-bench-flux-", dir=parent) as tmp:
        started = time.perf_counter()
        cmd = [sys.executable, "-m", "benchmarks.flux_dev", "--shape", shape.name, "--device", device, tmp]
        done = subprocess.run(cmd, check=False, cwd=ROOT, capture_output=True, text=True, timeout=max(budget.left(), 1))
        if done.returncode:
            raise RuntimeError(f"building the {shape.name} pipeline failed:\n{done.stderr[-4000:]}")
        print(f"  gpu         {shape.label}: built and saved in {tmp} ({time.perf_counter() - started:.0f} s)",
              flush=True)  # fmt: skip
        yield tmp


def _roomy_shm(need: int) -> str | None:
    """/dev/shm when it has ``need`` bytes free (five processes read the weights: memory
    beats a disk), else None (the system's temporary directory)."""
    if need and os.path.isdir("/dev/shm") and shutil.disk_usage("/dev/shm").free >= need:
        return "/dev/shm"
    return None


def cpu_name() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"CPU: {line.split(':', 1)[1].strip()} x{os.cpu_count()}"
    return f"CPU x{os.cpu_count()}"


# ---- direct: the predictor in a process of its own --------------------------------------


def _direct_child(path: str, options: dict[str, str], inputs: dict[str, Any], device: str, runs: int, out: Any) -> None:
    try:
        import torch

        from para_attn_server.plugin.manager import Plugins
        from para_attn_server.predictor import JobContext, RankContext, running
        from para_attn_server.schema import InputSchema

        settings = {"model_path": path, **options}
        predictor: Any = Plugins.load().resolve_predictor("flux")
        predictor.configure(1, settings)
        predictor.setup(RankContext(0, 1, 0, torch.device("cuda", 0) if device == "cuda" else torch.device("cpu")))
        schema = InputSchema(predictor)
        kwargs = schema.predict_kwargs(schema.convert(inputs))
        # The work's time, not its launch's.
        sync: Callable[[], None] = torch.cuda.synchronize if device == "cuda" else lambda: None
        times = []
        for index in range(runs):
            sync()
            started = time.perf_counter()
            with running(JobContext(f"direct-{index}", kwargs, 0, 1, lambda step, total: False)):
                predictor.predict(**kwargs)
            sync()
            times.append(time.perf_counter() - started)
        out.put(("ok", times))
    except BaseException as exc:
        out.put(("failed", f"{type(exc).__name__}: {exc}"))


def direct(
    path: str, options: dict[str, str], inputs: dict[str, Any], device: str, jobs: int, budget: Budget
) -> Outcome:
    """The flux predictor called directly, ``WARMUP_JOBS`` + ``jobs`` times, in a spawned
    process (its memory goes with it before the servers load their own copies)."""
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    proc = ctx.Process(target=_direct_child, args=(path, options, inputs, device, WARMUP_JOBS + jobs, out))
    proc.start()
    try:
        while True:
            try:
                status, value = out.get(timeout=1)
                break
            except queue.Empty:
                if not proc.is_alive():
                    return Outcome(status="failed", reason=f"the direct process died (exit code {proc.exitcode})")
                if budget.left() <= 0:
                    return Outcome(status="failed", reason="not finished within the time budget")
    finally:
        proc.join(30)
        if proc.is_alive():
            proc.kill()
            proc.join()
    if status != "ok":
        return Outcome(status="failed", reason=_short(value))
    return Outcome(times=value[WARMUP_JOBS:])


# ---- served: para-attn-server on one rank -----------------------------------------------


def served(path: str, options: dict[str, str], inputs: dict[str, Any], jobs: int, budget: Budget) -> Outcome:
    """``WARMUP_JOBS`` + ``jobs`` jobs through a server started with ``options``; a server
    that does not start gives its reason."""
    from para_attn_server import testing

    args = ["--model", "flux", "--model-path", path, "--num-devices", "1", "--log-level", "INFO"]
    for key, value in options.items():
        args += ["-o", f"{key}={value}"]
    with tempfile.TemporaryDirectory(prefix="para-attn-bench-") as tmp:
        command = None
        if not testing.CLI.exists():  # installed with pip --target (gpu.sh): no script beside python
            command = [sys.executable, "-m", "para_attn_server.cli", "--port", "0", "--output-dir", f"{tmp}/outputs",
                       *args]  # fmt: skip
        try:
            srv = testing.Server(args, Path(tmp), wait_ready=False, command=command)
        except AssertionError as exc:  # it exited before listening: a usage or option error
            return Outcome(status="failed", reason=start_error(str(exc).splitlines()))
        try:
            srv.wait_ready(timeout=max(budget.left(), 1))
            times = _jobs(srv.port, inputs, WARMUP_JOBS + jobs, budget)
        except AssertionError as exc:
            srv.kill()
            if str(exc).startswith("the process ended"):
                return Outcome(status="failed", reason=start_error(srv.log.lines))
            return Outcome(status="failed", reason="not ready within the time budget")
        except JobError as exc:
            srv.kill()
            return Outcome(status="failed", reason=str(exc))
        except BaseException:
            srv.kill()  # its ranks die with it (PR_SET_PDEATHSIG)
            raise
        srv.close()
    return Outcome(times=times[WARMUP_JOBS:])


def _jobs(port: int, inputs: dict[str, Any], runs: int, budget: Budget) -> list[float]:
    """Seconds of each of ``runs`` jobs, each one ``POST /v1/jobs?wait`` answered with the
    image's bytes (the server's quickest round trip)."""
    body = json.dumps(inputs).encode()
    headers = {"content-type": "application/json", "accept": "application/octet-stream"}
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=max(budget.left(), 1) + 30)
    times = []
    try:
        for _ in range(runs):
            wait = int(min(600, max(1, budget.left())))
            started = time.perf_counter()
            conn.request("POST", f"/v1/jobs?wait={wait}", body, headers)
            response = conn.getresponse()
            data = response.read()
            elapsed = time.perf_counter() - started
            if response.status != 201 or "json" in (response.getheader("content-type") or ""):
                raise JobError(_job_error(response.status, data))
            times.append(elapsed)
    finally:
        conn.close()
    return times


def _job_error(status: int, data: bytes) -> str:
    try:
        view = json.loads(data)
    except ValueError:
        return _short(f"HTTP {status}: {data[:200]!r}")
    if view.get("state") in ("queued", "running"):
        return "a job did not finish within the time budget"
    return _short(f"job {view.get('state', f'HTTP {status}')}: {view.get('error') or view.get('detail') or view}")


START_ERROR = re.compile(r"^para-attn-server: (?:error: |setup failed: )?(?P<reason>.+)$")


def start_error(lines: list[str]) -> str:
    """Why a server did not start: its last ``para-attn-server: ...`` line (a usage, option
    or setup error), else its last line."""
    for line in reversed(lines):
        if match := START_ERROR.match(line.strip()):
            return _short(match["reason"])
    return _short(next((line for line in reversed(lines) if line.strip()), "the server exited"))


def _short(text: str, limit: int = 300) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


@contextlib.contextmanager
def _sigterm_interrupts() -> Iterator[None]:
    """SIGTERM (gpu.sh's timeout) unwinds like ^C: servers, the direct process and the
    saved weights (24 GB in /dev/shm) are cleaned up instead of left behind."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: FrameType | None) -> None:
        # Once: timeout(1) signals the process and then its group, so it comes twice.
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        raise KeyboardInterrupt(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
