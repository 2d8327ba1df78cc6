"""``--only soak [--minutes N]``: a long-running server under steady load, to show that its
memory stays flat and its files stay bounded over very many jobs.

One server, ``--model noop --num-devices 2``, with small retention caps (``SERVER_ARGS``) so
that nothing it is meant to keep can explain growth. ``CLIENTS`` connections (raw asyncio
streams, as ``drive_wait_jobs``) each run three kinds of job in turn, back to back:
``POST /v1/jobs?wait=30`` of a 1 KiB output (the bytes back), the original API's
``POST /generate`` of a 64 KiB output then ``GET /get_output/<id>`` until 200, and a
fire-and-forget ``POST /v1/jobs`` of 2 steps. It runs ``--minutes`` (20; ``--quick``: 1).

Every ``SAMPLE_SECONDS`` (``--quick``: 5) it records, for each process of the server's tree
(the server, the multiprocessing fork server and resource tracker, each rank), its RSS, its
open file descriptors and how many are sockets; the journal's size (``jobs.sqlite3`` and its
``-wal`` and ``-shm``), the output directory's size and file count, the jobs done and
``/server_status``' restarts.

Each series' slope is a least-squares fit against jobs done, per 100,000 jobs, over the
samples after the first quarter of the run (the warm-up; at least 2 samples). Targets: the
server's and each rank's RSS <= ``RSS_MAX_SLOPE_MIB``, every process's open fds <=
``FDS_MAX_SLOPE`` (flat); after the warm-up the journal <= ``JOURNAL_MAX_MIB`` and the output
directory <= ``MAX_RECORDS`` + ``FILES_SLACK`` files at every sample; no errors, no restarts.
A row's value is its slope; start and end are the first and last samples of the run.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from para_attn_server.testing import Server

from .harness import Report, post_head, raw_request, server

SUITE = "soak"
CLIENTS = 8
MINUTES, QUICK_MINUTES = 20.0, 1.0
SAMPLE_SECONDS, QUICK_SAMPLE_SECONDS = 30.0, 5.0
MAX_RECORDS = 5000
OUTPUT_MEMORY_BYTES = 32 << 20
SERVER_ARGS = ("--max-records", str(MAX_RECORDS), "--output-memory-bytes", str(OUTPUT_MEMORY_BYTES),
               "--result-ttl", "60")  # fmt: skip
RSS_MAX_SLOPE_MIB = 1.0  # per 100k jobs
FDS_MAX_SLOPE = 1.0  # per 100k jobs
JOURNAL_MAX_MIB = 64.0
FILES_SLACK = 100  # the journal's files and outputs in flight, beyond the records kept
PER = 100_000  # slopes are per this many jobs
MIB = float(1 << 20)
KEPT_ERRORS = 20  # error messages kept for the report (all are counted)
POLL_LIMIT = 60.0  # seconds a /get_output poll may go on before it counts as an error

KINDS = ("wait", "original", "fire")
BODIES = {"wait": b'{"size": 1024}', "original": b'{"size": 65536}', "fire": b'{"size": 1024, "steps": 2}'}
HEADS = {
    "wait": post_head("/v1/jobs?wait=30", BODIES["wait"], "application/octet-stream"),
    "original": post_head("/generate", BODIES["original"]),
    "fire": post_head("/v1/jobs", BODIES["fire"]),
}


@dataclass
class Load:
    """What the clients did so far (one event loop mutates it; the sampler's thread reads)."""

    jobs: int = 0
    by_kind: dict[str, int] = field(default_factory=lambda: dict.fromkeys(KINDS, 0))
    errors: int = 0
    messages: list[str] = field(default_factory=list)

    def done(self, kind: str) -> None:
        self.jobs += 1
        self.by_kind[kind] += 1

    def error(self, message: str) -> None:
        self.errors += 1
        if len(self.messages) < KEPT_ERRORS:
            self.messages.append(message)
            print(f"  (error: {message})", flush=True)


@dataclass
class Proc:
    pid: int
    rss_bytes: int
    rss_anon_bytes: int  # the heap; the rest is mapped files and shared memory
    fds: int
    sockets: int
    fd_kinds: dict[str, int]  # "socket", "pipe", "anon_inode", or a file's directory: what a leak is of


@dataclass
class Sample:
    t: float
    jobs: int
    errors: int
    restarts: int
    processes: dict[str, Proc]
    journal_bytes: dict[str, int]  # file name -> size
    output_bytes: int
    output_files: int


# ---- load -------------------------------------------------------------------------------


async def one_job(kind: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, load: Load) -> None:
    status, data = await raw_request(reader, writer, HEADS[kind], BODIES[kind])
    if kind == "wait":
        ok = status == 201 and len(data) == 1024  # the output itself, not a job view
    elif kind == "fire":
        ok = status == 201
    else:
        if status == 202:
            status, data = await poll(reader, writer, json.loads(data)["request_id"])
        ok = status == 200
    if ok:
        load.done(kind)
    else:
        load.error(f"{kind}: HTTP {status} {data[:160]!r}")


async def poll(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request_id: str) -> tuple[int, bytes]:
    """``GET /get_output/<id>`` until it is not a 202: the server holds each poll for
    ``--result-poll-wait`` (0.1 s) before a 202, so there is no sleep here."""
    head = f"GET /get_output/{request_id} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode()
    deadline = time.monotonic() + POLL_LIMIT
    while True:
        status, data = await raw_request(reader, writer, head, b"")
        if status != 202 or time.monotonic() > deadline:
            return status, data


async def client_loop(port: int, index: int, load: Load, stop: asyncio.Event) -> None:
    """One connection, the kinds in turn (each client starts at another, so the mix is even
    at any moment); a failed request counts as an error and the connection is made again."""
    conn: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
    turn = index
    while not stop.is_set():
        kind = KINDS[turn % len(KINDS)]
        try:
            if conn is None:
                conn = await asyncio.open_connection("127.0.0.1", port)
            await one_job(kind, *conn, load)
            turn += 1
        except (OSError, ValueError, IndexError, KeyError, asyncio.IncompleteReadError) as exc:
            load.error(f"{kind}: {exc!r}")
            if conn is not None:
                conn[1].close()
            conn = None
            await asyncio.sleep(0.5)  # a server that is gone is not hammered
    if conn is not None:
        conn[1].close()


# ---- samples ----------------------------------------------------------------------------


def children() -> dict[int, list[int]]:
    """Every process's children, from /proc/*/stat's ppid (the field after the name, which
    may hold spaces and parentheses: split after the last ')')."""
    out: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            ppid = int(stat[stat.rindex(")") + 2 :].split()[1])
            out.setdefault(ppid, []).append(int(entry))
    return out


def descendants(pid: int) -> list[int]:
    tree = children()
    found, todo = [], [pid]
    while todo:
        found.append(todo.pop())
        todo += tree.get(found[-1], [])
    return found


def label(pid: int, root: int, ranks: dict[int, str]) -> str:
    if pid == root:
        return "server"
    if pid in ranks:
        return ranks[pid]
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        cmdline = ""
    for key, name in (("forkserver", "forkserver"), ("resource_tracker", "resource-tracker")):
        if key in cmdline:
            return name
    return f"pid-{pid}"


def proc(pid: int) -> Proc | None:
    """RSS, open fds and sockets of a process; None when it ended while being read."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
        fields = {line.split(":")[0]: line.split() for line in status.splitlines()}
        rss, anon = (int(fields[key][1]) * 1024 for key in ("VmRSS", "RssAnon"))
        links = []
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                links.append(os.readlink(f"/proc/{pid}/fd/{fd}"))
            except OSError:  # closed since the listing
                continue
    except (OSError, KeyError):
        return None
    kinds: dict[str, int] = {}
    for link in links:
        kind = os.path.dirname(link) if link.startswith("/") else link.split(":", 1)[0]
        kinds[kind] = kinds.get(kind, 0) + 1
    return Proc(pid, rss, anon, len(links), kinds.get("socket", 0), kinds)


def tree_size(path: Path) -> tuple[int, int]:
    """Bytes and files under ``path``; files removed while walking are skipped."""
    size = files = 0
    try:
        entries = list(os.scandir(path))
    except OSError:
        return 0, 0
    for entry in entries:
        try:
            if entry.is_dir(follow_symlinks=False):
                more, count = tree_size(Path(entry.path))
                size, files = size + more, files + count
            else:
                size, files = size + entry.stat(follow_symlinks=False).st_size, files + 1
        except OSError:
            continue
    return size, files


def take_sample(srv: Server, load: Load, t: float, restarts: int) -> Sample:
    ranks: dict[int, str] = {}
    try:
        status = srv.status()
        restarts = int(status["restarts"])
        ranks = {row["pid"]: f"rank-{row['rank']}" for row in status["ranks"]}
    except Exception as exc:  # the sample goes on with the last count, and says so
        load.error(f"/server_status: {exc!r}")
    processes: dict[str, Proc] = {}
    for pid in descendants(srv.process.pid):
        if (stats := proc(pid)) is not None:
            name = label(pid, srv.process.pid, ranks)
            processes[f"{name}-{pid}" if name in processes else name] = stats
    jobs_dir = srv.output_dir / ".jobs"
    journal = {}
    for name in ("jobs.sqlite3", "jobs.sqlite3-wal", "jobs.sqlite3-shm"):
        try:
            journal[name] = (jobs_dir / name).stat().st_size
        except OSError:
            journal[name] = 0
    size, files = tree_size(srv.output_dir)
    return Sample(round(t, 2), load.jobs, load.errors, restarts, processes, journal, size, files)


async def drive(srv: Server, seconds: float, interval: float) -> tuple[Load, list[Sample]]:
    """The clients for ``seconds``, and a sample at 0, every ``interval`` and at the end
    (the sampling runs in a thread, so the load goes on while it reads /proc)."""
    load, stop = Load(), asyncio.Event()
    samples: list[Sample] = []
    tasks = [asyncio.create_task(client_loop(srv.port, i, load, stop)) for i in range(CLIENTS)]
    start = time.monotonic()
    ticks = max(1, math.ceil(seconds / interval - 1e-9))
    for tick in range(ticks + 1):
        await asyncio.sleep(max(0.0, start + min(tick * interval, seconds) - time.monotonic()))
        restarts = samples[-1].restarts if samples else 0
        sample = await asyncio.to_thread(take_sample, srv, load, time.monotonic() - start, restarts)
        samples.append(sample)
        top = sample.processes.get("server", Proc(0, 0, 0, 0, 0, {}))
        journal = sum(sample.journal_bytes.values()) / MIB
        print(f"  ({sample.t:6.0f} s: {sample.jobs} jobs, {sample.errors} errors, {sample.restarts} restarts, "
              f"server RSS {top.rss_bytes / MIB:.1f} MiB (anon {top.rss_anon_bytes / MIB:.1f}), "
              f"journal {journal:.2f} MiB, {sample.output_files} files)", flush=True)  # fmt: skip
    stop.set()
    await asyncio.gather(*tasks)
    return load, samples


# ---- verdicts ---------------------------------------------------------------------------


@dataclass
class Series:
    name: str
    unit: str
    points: list[tuple[float, int, float]]  # (t, jobs, value)
    rule: str  # "slope": slope <= limit; "max": every value after warm-up <= limit; "zero"; "info"
    limit: float = 0.0


def series_of(samples: list[Sample]) -> list[Series]:
    labels = sorted(
        {name for s in samples for name in s.processes}, key=lambda n: (n != "server", not n.startswith("rank-"), n)
    )
    judged_rss = {name for name in labels if name == "server" or name.startswith("rank-")}
    out = []
    for name in labels:
        present = [s for s in samples if name in s.processes]
        rss = [(s.t, s.jobs, s.processes[name].rss_bytes / MIB) for s in present]
        out.append(Series(f"{name} RSS", "MiB", rss, "slope" if name in judged_rss else "info", RSS_MAX_SLOPE_MIB))
        fds = [(s.t, s.jobs, float(s.processes[name].fds)) for s in present]
        out.append(Series(f"{name} open fds", "fds", fds, "slope", FDS_MAX_SLOPE))
        sockets = [(s.t, s.jobs, float(s.processes[name].sockets)) for s in present]
        out.append(Series(f"{name} sockets", "sockets", sockets, "info"))

    def points(value: Callable[[Sample], float]) -> list[tuple[float, int, float]]:
        return [(s.t, s.jobs, value(s)) for s in samples]

    journal = points(lambda s: sum(s.journal_bytes.values()) / MIB)
    return [
        *out,
        Series("journal (db + wal + shm)", "MiB", journal, "max", JOURNAL_MAX_MIB),
        Series("journal -wal", "MiB", points(lambda s: s.journal_bytes["jobs.sqlite3-wal"] / MIB), "info"),
        Series("output dir size", "MiB", points(lambda s: s.output_bytes / MIB), "info"),
        Series("output dir files", "files", points(lambda s: s.output_files), "max", MAX_RECORDS + FILES_SLACK),
        Series("restarts", "restarts", points(lambda s: s.restarts), "zero"),
        Series("errors", "errors", points(lambda s: s.errors), "zero"),
    ]


def slope(points: list[tuple[float, int, float]]) -> float:
    """Least-squares slope of value against jobs, per ``PER`` jobs (nan under 2 points or
    without jobs done between them)."""
    if len(points) < 2:
        return math.nan
    xs, ys = [float(p[1]) for p in points], [p[2] for p in points]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    var = sum((x - mx) ** 2 for x in xs)
    return math.nan if var == 0 else sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / var * PER


def judge(report: Report, series: Series, warm_from: float) -> bool | None:
    kept = [p for p in series.points if p[0] >= warm_from]
    if len(kept) < 2:
        kept = series.points[-2:]
    per = slope(kept)
    start, end = series.points[0][2], series.points[-1][2]
    passed: bool | None = None
    if series.rule == "slope":
        passed = per <= series.limit  # nan (too few samples) fails
        target = f"slope <= {series.limit:g} {series.unit}/100k jobs"
    elif series.rule == "max":
        peak = max(p[2] for p in kept)
        passed = peak <= series.limit
        target = f"<= {series.limit:g} {series.unit} after warm-up (max {_num(peak)})"
    elif series.rule == "zero":
        passed = max(p[2] for p in series.points) == 0
        target = "0"
    else:
        target = ""
    verdict = "no target" if passed is None else f"target {target}: {'PASS' if passed else 'FAIL'}"
    detail = f"start {_num(start)} end {_num(end)} {series.unit}; {verdict}"
    report.add(SUITE, series.name, per, f"{series.unit}/100k jobs", detail,
               start=start, end=end, slope_per_100k=None if math.isnan(per) else per, rule=series.rule,
               target=series.limit if series.rule in ("slope", "max") else None, passed=passed)  # fmt: skip
    return passed


def _num(value: float) -> str:
    return f"{value:.2f}" if value != int(value) else f"{value:.0f}"


def soak(report: Report, quick: bool, minutes: float | None = None) -> None:
    minutes = minutes if minutes is not None else (QUICK_MINUTES if quick else MINUTES)
    interval = QUICK_SAMPLE_SECONDS if quick else SAMPLE_SECONDS
    seconds = minutes * 60
    with server("noop", 2, *SERVER_ARGS) as srv:
        since = len(srv.log.lines)
        load, samples = asyncio.run(drive(srv, seconds, interval))
        warnings = [line for line in srv.log.lines[since:] if "WARNING" in line or "ERROR" in line]
    for line in warnings[:KEPT_ERRORS]:
        print(f"  (server: {line})", flush=True)
    took = samples[-1].t
    warm_from = took / 4
    kinds = ", ".join(f"{n} {kind}" for kind, n in load.by_kind.items())
    report.add(SUITE, f"{minutes:g} min, {CLIENTS} clients, 3 kinds of job", load.jobs / took, "jobs/s",
               f"{load.jobs} jobs ({kinds}); {load.errors} errors; {len(warnings)} server warnings; "
               f"{len(samples)} samples every {interval:g} s; slopes from {warm_from:.0f} s",
               jobs=load.jobs, by_kind=load.by_kind, errors=load.errors, error_messages=load.messages,
               server_warnings=warnings[:KEPT_ERRORS], server_args=list(SERVER_ARGS), warm_from_s=warm_from,
               samples=[dataclasses.asdict(s) for s in samples])  # fmt: skip
    verdicts = [judge(report, series, warm_from) for series in series_of(samples)]
    failed = sum(v is False for v in verdicts)
    print(f"  ({sum(v is True for v in verdicts)} PASS, {failed} FAIL)", flush=True)
