"""``--only fleet``: a fleet of 2 hosts of 2 groups each against 1 group of 1 rank.

The fleet is a front (``--num-devices 0 --join-token``: it queues and serves HTTP, runs no
ranks) and two ``para-attn-server join`` processes ("hosts" on this machine), each with
``--num-devices 2 --group-size 1``: 4 groups behind one queue. The single server is
``--model noop --num-devices 1``. Both run in the same run, and the same client
(``drive_wait_jobs``: ``CLIENTS`` connections submitting ``POST /v1/jobs?wait`` back to back)
drives them in interleaved rounds: fleet, single, fleet, single, ...

Jobs are ``noop`` with ``STEPS`` steps that each sleep ``STEP_SECONDS``: a job's time is
mostly sleep, so the machine's 2 cores are not the limit and what is measured is how many
jobs run at once, and what the front's hand-off to a host adds to each. ``CLIENTS`` is twice
the fleet's groups, so the front's queue never runs dry while a client turns around.

Target: the fleet's jobs/s >= ``MIN_RATIO`` x the single group's (4 groups; 4x is the ceiling).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from para_attn_server.testing import CLI, LogWatcher, Server, server_env

from .harness import Report, Stat, drive_wait_jobs, server

SUITE = "fleet"
TOKEN = "fleet-benchmark-token"
HOSTS = ("host-a", "host-b")
GROUPS_PER_HOST = 2
GROUPS = len(HOSTS) * GROUPS_PER_HOST
CLIENTS = 2 * GROUPS
STEPS, STEP_SECONDS = 5, 0.1  # a 0.5 s job
MIN_RATIO = 3.6
BODY = json.dumps({"size": 1024, "steps": STEPS, "step_seconds": STEP_SECONDS}).encode()


class Join:
    """``para-attn-server join URL --token T --num-devices 2 --group-size 1 --name NAME``: a
    host of the fleet, as a process on this machine (as tests/integration/support.py's
    ``Join``, which benchmarks do not import: tests are not part of the package)."""

    def __init__(self, url: str, name: str) -> None:
        cli = [str(CLI), "join", url, "--token", TOKEN, "--num-devices", str(GROUPS_PER_HOST), "--group-size", "1",
               "--name", name, "--log-level", "INFO"]  # fmt: skip
        self.process = subprocess.Popen(
            cli, env=server_env(), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        self.log = LogWatcher(self.process)
        self._terminated = False

    def terminate(self) -> None:
        """SIGTERM once: the host drains (its jobs finish) and leaves. A second one means
        "stop now": the front would see the host lost and wait out --host-timeout."""
        if self.process.poll() is None and not self._terminated:
            self._terminated = True
            self.process.send_signal(signal.SIGTERM)

    def stop(self, timeout: float = 60) -> None:
        self.terminate()
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(30)
        self.log.wait_closed(10)


def wait_serving(front: Server, joins: list[Join], timeout: float = 120) -> None:
    """Until every host is listed in ``/server_status`` as serving with all its groups ready
    (as tests/integration/test_fleet.py's ``wait_serving``)."""
    names = HOSTS
    deadline = time.monotonic() + timeout
    while True:
        status = front.status()
        ready = {group["group"] for group in status["groups"] if group["ready"]}
        rows = {host["name"]: host for host in status["hosts"]}
        if all(
            n in rows
            and rows[n]["state"] == "serving"
            and len(rows[n]["groups"]) == GROUPS_PER_HOST
            and set(rows[n]["groups"]) <= ready
            for n in names
        ):
            return
        ended = [j.log.tail() for j in joins if j.process.poll() is not None]
        if ended or time.monotonic() > deadline:
            raise RuntimeError(f"hosts not serving: {rows}\n{front.log.tail()}\n" + "\n".join(ended))
        time.sleep(0.2)


@contextlib.contextmanager
def fleet_server() -> Iterator[Server]:
    """The front, yielded once both hosts serve with all their groups ready; the hosts
    drain and leave before the front stops."""
    with tempfile.TemporaryDirectory(prefix="para-attn-bench-") as tmp:
        cli = ["--model", "noop", "--num-devices", "0", "--join-token", TOKEN, "--log-level", "INFO"]
        # wait_ready=False: a front logs "ready: 0 rank(s)" before any host joins.
        with Server(cli, Path(tmp), wait_ready=False) as front:
            joins: list[Join] = []
            try:
                joins = [Join(front.url, name) for name in HOSTS]
                wait_serving(front, joins)
                yield front
            finally:
                for join in joins:  # all drain at once
                    join.terminate()
                for join in joins:
                    join.stop()


def one_round(name: str, srv: Server, clients: int, per_client: int) -> tuple[float, list[float]]:
    """``drive_wait_jobs`` with no warm-up of its own; a refused job (its assert) fails with
    the server's log, which says why (a host lost, a group restarting)."""
    try:
        return asyncio.run(drive_wait_jobs(srv.port, BODY, clients, per_client, (0, 0)))
    except AssertionError as exc:
        raise RuntimeError(f"{name}: a job got HTTP {exc}; its log:\n{srv.log.tail(30)}") from exc


def fleet(report: Report, quick: bool) -> None:
    rounds, per_client = (2, 1) if quick else (4, 2)
    rates: dict[str, list[float]] = {"fleet": [], "single": []}
    latencies: dict[str, list[float]] = {"fleet": [], "single": []}
    started = time.perf_counter()
    with fleet_server() as front, server("noop", 1) as single:
        print(f"  (fleet and single server up in {time.perf_counter() - started:.1f} s)", flush=True)
        servers = {"fleet": front, "single": single}
        # Warm-up, untimed: a job per group, so every group (and every connection the front
        # keeps to a host) has run one.
        for name, groups in (("fleet", GROUPS), ("single", 1)):
            one_round(name, servers[name], groups, 1)
        since = len(front.log.lines)
        for _ in range(rounds):
            for name, srv in servers.items():  # fleet, single, fleet, single, ...
                rate, took = one_round(name, srv, CLIENTS, per_client)
                rates[name].append(rate)
                latencies[name] += took
        events = fleet_events(front, since)
    _rows(report, rates, latencies, rounds, CLIENTS * per_client, events)


def fleet_events(front: Server, since: int) -> list[str]:
    """What happened to the fleet during the rounds (a host lost, a group's fault): a
    fleet that shrank measures fewer groups, and its row says so rather than just FAIL."""
    keys = ("para_attn_server.fleet", " fault", "WARNING", "ERROR")
    events = [line for line in front.log.lines[since:] if any(key in line for key in keys)]
    for line in events:
        print(f"  (front: {line})", flush=True)
    return events


def _rows(
    report: Report,
    rates: dict[str, list[float]],
    latencies: dict[str, list[float]],
    rounds: int,
    jobs: int,
    events: list[str],
) -> None:
    job = f"{STEPS} x {STEP_SECONDS * 1e3:.0f} ms noop"
    stats = {name: Stat.of(rates[name]) for name in rates}
    for name, label in (("single", "1 group of 1"), ("fleet", f"fleet: {len(HOSTS)} hosts x {GROUPS_PER_HOST} groups")):
        s, lat = stats[name], Stat.of(latencies[name])
        report.add(SUITE, f"{label}, {CLIENTS} clients", s.median, "jobs/s",
                   f"[{s.min:.2f} .. {s.max:.2f}]; {rounds} rounds of {jobs} jobs ({job}); "
                   f"latency p50 {lat.median * 1e3:.0f} ms p90 {lat.p90 * 1e3:.0f} ms",
                   stat=vars(s), latency=vars(lat))  # fmt: skip
    ratio = stats["fleet"].median / stats["single"].median
    passed = ratio >= MIN_RATIO
    changed = f"; the fleet changed during the rounds ({len(events)} log lines above)" if events else ""
    report.add(SUITE, "jobs/s: fleet / 1 group", ratio, "x",
               f"interleaved rounds, same client; target >= {MIN_RATIO}x: {'PASS' if passed else 'FAIL'}{changed}",
               target=MIN_RATIO, passed=passed, fleet_events=events)  # fmt: skip
