"""Storage and webhooks under an unlucky or hostile operator's conditions (issue 24: 6, 8, 9, 11).

- submits while the output directory, or the journal alone, is deleted answer 503: nothing
  is acknowledged that a restart would not know;
- the private directory is 0700, the journal 0600 and outputs 0640 (none readable by other
  users), tightened on an older layout at start, and temporaries a crash left are swept;
- a job the restart gives up (``failed: server restarted``) still sends its final webhook,
  with a webhook-id no earlier delivery used (receivers deduplicate by it); so does a job
  whose final webhook was still being tried when the server was killed;
- a webhook's host name is resolved once per job: a DNS answer that changes mid-job (here
  the server's own /etc/hosts, in a mount namespace of its own, rewritten by the test)
  moves no delivery, and the name stays in ``Host``; an allow entry without a port allows
  the scheme's default port only.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import os
import shlex
import shutil
import signal
import socket
import sqlite3
import stat
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import msgspec
import pytest
from pytest_httpserver import HTTPServer
from werkzeug import Request, Response

from para_attn_plugins.webhooks import FINAL, AllowedHosts, Sender, WebhookSettings
from para_attn_server.records import JobRecord, JobState
from para_attn_server.testing import CLI, Server, pid_gone, server_env
from tests.reliability.support import Report, until
from tests.webhook_receiver import SECRET, Receiver

pytestmark = pytest.mark.timeout(240)

NOOP = ["--model", "noop", "--num-devices", "1"]
FAULTY = ["--model", "tests.predictors:Faulty", "--num-devices", "1"]
TEMPORARY = ".tmp-0123456789abcdef"


def no_server_paths(text: str, server: Server) -> bool:
    return str(server.workdir) not in text and "/tmp" not in text and "Traceback" not in text


def submits(server: Server) -> list[httpx.Response]:
    """One submit on each route that queues a job."""
    return [
        server.http.post("/v1/jobs", json={"size": 100}),
        server.http.put(f"/v1/jobs/{uuid.uuid4()}", json={"size": 100}),
        server.http.post("/generate", json={"size": 100}),
        server.http.post("/v1/jobs", params={"wait": 5}, json={"size": 100}),
    ]


def job_id(answer: httpx.Response) -> str:
    body = answer.json()
    return str(body.get("request_id") or body["id"])


# ---- 6: acknowledged means durable -------------------------------------------------------------


def delete_output_directory(server: Server) -> None:
    shutil.rmtree(server.output_dir)


def delete_journal(server: Server) -> None:
    for path in (server.output_dir / ".jobs").glob("jobs.sqlite3*"):
        path.unlink()


@pytest.mark.parametrize(
    ("what", "delete"),
    [("output directory", delete_output_directory), ("journal", delete_journal)],
    ids=["output directory", "journal"],
)
def test_submits_after_the_directory_or_journal_is_deleted_answer_503_and_none_is_lost(
    servers: list[Server], tmp_path: Path, report: Report, what: str, delete: Callable[[Server], None]
) -> None:
    server = Server([*NOOP, "--output-memory-bytes", "0"], tmp_path)
    servers.append(server)
    before = server.run(size=100)
    until(lambda: any(server.output_dir.rglob(f"{before['id']}.*")), 30, "the first output's copy on disk")
    delete(server)

    answers = submits(server)
    ready = server.http.get("/health/ready")
    server.kill()
    again = Server(NOOP, tmp_path)
    servers.append(again)

    acknowledged = [job_id(answer) for answer in answers if answer.status_code < 300]
    unknown = [job for job in acknowledged if again.http.get(f"/v1/jobs/{job}").status_code == 404]
    assert unknown == [], f"{len(unknown)} of {len(acknowledged)} acknowledged jobs unknown after the restart"
    assert [answer.status_code for answer in answers] == [503] * len(answers), [a.text for a in answers]
    for answer in answers:
        assert "journal" in answer.json()["error"], answer.text
        assert no_server_paths(answer.text, server)
    assert ready.status_code == 503
    assert no_server_paths(ready.text, server)
    report.add(
        "Integrity",
        case=f"{what} deleted while serving, then {len(answers)} submits (POST, PUT, /generate, ?wait) and a "
        "SIGKILL and restart",
        outcome=f"{len(answers)} of {len(answers)} answered 503 ({answers[0].json()['error']}), "
        f"{len(acknowledged)} acknowledged, {len(unknown)} unknown after the restart; /health/ready 503",
    )


# ---- 11: who may read what the server keeps -----------------------------------------------------


@pytest.fixture
def umask_022() -> Iterator[None]:
    """The usual umask, under which a plain open() makes files every user may read."""
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


def modes(root: Path) -> dict[str, int]:
    """Every path under ``root`` (itself included) and its permission bits."""
    found = {".": stat.S_IMODE(root.stat().st_mode)}
    for path in root.rglob("*"):
        found[str(path.relative_to(root))] = stat.S_IMODE(path.lstat().st_mode)
    return found


def test_private_files_are_the_servers_alone_and_temporaries_a_crash_left_are_swept(
    servers: list[Server], tmp_path: Path, report: Report, umask_022: None
) -> None:
    first = Server([*NOOP, "--output-memory-bytes", "0"], tmp_path)
    servers.append(first)
    own = first.run(size=100)
    assert first.run(size=100, output_path="client/deep/x.bin")["state"] == "succeeded"
    jobs = first.output_dir / ".jobs"
    until(lambda: any(jobs.glob(f"{own['id']}.*")), 30, "the server's copy on disk")
    until((first.output_dir / "client" / "deep" / "x.bin").exists, 30, "the client's file on disk")
    seen = modes(first.output_dir)
    first.kill()

    assert seen[".jobs"] == 0o700, oct(seen[".jobs"])
    for name in ("jobs.sqlite3", "jobs.sqlite3-wal", "jobs.sqlite3-shm", "server.lock"):
        assert seen[f".jobs/{name}"] == 0o600, (name, oct(seen[f".jobs/{name}"]))
    assert seen[f".jobs/{own['id']}.bin"] == 0o640
    assert seen["client/deep/x.bin"] == 0o640
    assert (seen["client"], seen["client/deep"]) == (0o750, 0o750)
    readable = {path: oct(mode) for path, mode in seen.items() if mode & 0o004}
    assert readable == {}, readable

    # An older release's layout (world-readable), and temporaries a crash left behind.
    jobs.chmod(0o755)
    for path in jobs.glob("jobs.sqlite3*"):
        path.chmod(0o644)
    planted = [first.output_dir / TEMPORARY, jobs / TEMPORARY, first.output_dir / "client" / "deep" / TEMPORARY]
    for path in planted:
        path.write_bytes(b"half an output")
    theirs = first.output_dir / "client" / ".tmp-not-ours.bin"
    theirs.write_bytes(b"a client's")
    second = Server(NOOP, tmp_path)
    servers.append(second)
    swept = second.log.wait_for(r"removed (\d+) temporary file\(s\)")
    after = modes(second.output_dir)

    assert [path.exists() for path in planted] == [False] * len(planted)
    assert (int(swept[1]), theirs.exists()) == (len(planted), True)
    assert after[".jobs"] == 0o700
    assert after[".jobs/jobs.sqlite3"] == 0o600
    assert second.http.get(f"/v1/jobs/{own['id']}/output").status_code == 200
    report.add(
        "Integrity",
        case="file modes under umask 022; an older release's 0755/0644 layout; temporaries a crash left",
        outcome=f".jobs {oct(seen['.jobs'])}, journal and its -wal/-shm {oct(seen['.jobs/jobs.sqlite3'])}, "
        f"outputs {oct(seen['client/deep/x.bin'])}, client directories {oct(seen['client'])}: nothing readable by "
        f"other users; the older layout tightened at start; {swept[1]} of {len(planted)} temporaries swept, a "
        "client's look-alike kept",
    )


# ---- 8: a final webhook for a job the restart gave up -------------------------------------------


def all_gone(pids: list[int]) -> bool:
    return all(pid_gone(pid) for pid in pids)


def kill_with_ranks(server: Server) -> None:
    """SIGKILL the server; return once its ranks, which end with it, are gone too."""
    ranks = server.rank_pids()
    os.kill(server.process.pid, signal.SIGKILL)
    server.process.wait(30)
    until(functools.partial(all_gone, ranks), 30, "ranks exit once the server is gone")


def test_a_job_the_restart_gives_up_still_sends_its_final_webhook(
    servers: list[Server], tmp_path: Path, receiver: Receiver, report: Report
) -> None:
    args = [*FAULTY, "--webhook-allow-host", receiver.host, "--webhook-backoff", "0.1"]
    env = server_env(PARA_ATTN_SERVER_WEBHOOK_SECRET=SECRET)
    hold = tmp_path / "never"  # the job runs until the server dies under it
    job = ""
    for run in (1, 2):
        server = Server(args, tmp_path, env=env)
        servers.append(server)
        if run == 1:
            job = server.submit(hold=str(hold), webhook=receiver.url)
        receiver.wait(run)  # its start, this run: on record before it went out
        kill_with_ranks(server)

    started = time.monotonic()
    last = Server(args, tmp_path, env=env)
    servers.append(last)
    deliveries = receiver.of_job(job, timeout=30)
    took = deliveries[-1].at - started  # from the command's start: its ranks' setup included

    view = last.http.get(f"/v1/jobs/{job}").json()
    assert (view["state"], view["error"]) == ("failed", "server restarted")
    assert [d.event for d in deliveries] == ["start", "start", "completed"]
    assert deliveries[-1].job == view
    ids = [d.headers["Webhook-Id"] for d in deliveries]
    assert len(set(ids)) == len(ids), ids  # a receiver that deduplicates by id keeps each
    report.add(
        "Integrity",
        case="a job with a webhook the server died under twice (SIGKILL), given up at the next start",
        outcome=f"its final webhook (failed, 'server restarted') came {took:.1f} s after the server was started again; "
        f"{len(ids)} deliveries in all, {len(set(ids))} distinct webhook-ids",
    )


def journaled(server: Server, job_id: str) -> JobRecord | None:
    """The job's record as the journal holds it on disk, read without writing."""
    path = server.output_dir / ".jobs" / "jobs.sqlite3"
    with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
        row = db.execute("SELECT record FROM jobs WHERE id = ?", (job_id,)).fetchone()
    return None if row is None else msgspec.msgpack.decode(row[0], type=JobRecord)


def test_a_final_webhook_the_server_died_before_delivering_goes_out_at_the_next_start(
    servers: list[Server], tmp_path: Path, receiver: Receiver, report: Report
) -> None:
    """The job ended and was answered; its ``completed`` was being tried (the receiver
    answered 503) when the server was killed. Its record owed it, journaled: the next start
    sends it, once, and the promise is gone from the journal after."""
    args = [*NOOP, "--webhook-allow-host", receiver.host, "--webhook-backoff", "30"]
    env = server_env(PARA_ATTN_SERVER_WEBHOOK_SECRET=SECRET)
    first = Server(args, tmp_path, env=env)
    servers.append(first)
    receiver.answers = [503]  # then 200; the next try would be 30 s away
    job = first.submit(webhook=receiver.url, webhook_events_filter=["completed"])
    assert first.wait(job)["state"] == "succeeded"
    refused = receiver.wait(1)
    until(lambda: FINAL in getattr(journaled(first, job), "promises", ()), 30, "the promise journaled")
    kill_with_ranks(first)

    started = time.monotonic()
    second = Server(args, tmp_path, env=env)
    servers.append(second)
    deliveries = receiver.wait(2, timeout=30)  # the refused one, then the next start's
    took = deliveries[-1].at - started
    until(lambda: getattr(journaled(second, job), "promises", None) == (), 30, "the promise kept, journaled")

    assert [(d.event, d.answered) for d in deliveries] == [("completed", 503), ("completed", 200)]
    assert deliveries[-1].job == second.http.get(f"/v1/jobs/{job}").json()
    assert refused[0].headers["Webhook-Id"] != deliveries[-1].headers["Webhook-Id"]  # a new run's id
    report.add(
        "Integrity",
        case="a job's final webhook, refused once (503), its retry 30 s away, when the server was killed (SIGKILL)",
        outcome=f"delivered {took:.1f} s after the server was started again (ranks' setup included); the journal "
        "owed it until then",
    )


# ---- 9: webhook addresses pinned per job, allow entries with ports --------------------------------


@dataclass
class Landing:
    """What one address's receiver got: (Host header, webhook-id, job state) of each request."""

    got: list[tuple[str, str, str]] = field(default_factory=list)
    on_first: Callable[[], None] | None = None
    answers: list[int] = field(default_factory=list)  # then 200
    lock: threading.Lock = field(default_factory=threading.Lock)

    def handle(self, request: Request) -> Response:
        with self.lock:
            state = json.loads(request.get_data())["state"]
            self.got.append((request.headers.get("Host", ""), request.headers.get("Webhook-Id", ""), state))
            first, self.on_first = self.on_first, None
            status = self.answers.pop(0) if self.answers else 200
        if first is not None:
            first()
        # A new connection for every delivery and try: each one could resolve the name again.
        return Response("", status=status, headers={"Connection": "close"})


@pytest.fixture
def two_addresses() -> Iterator[tuple[int, Landing, Landing]]:
    """Receivers on 127.0.0.2 and 127.0.0.3, on one port: a name moved from one to the other
    keeps its URL."""
    for _ in range(20):
        with socket.socket() as probe:
            probe.bind(("127.0.0.2", 0))
            port = probe.getsockname()[1]
            with socket.socket() as other:
                try:
                    other.bind(("127.0.0.3", port))
                except OSError:
                    continue
        break
    landings = Landing(), Landing()
    started = []
    try:
        for address, landing in zip(("127.0.0.2", "127.0.0.3"), landings, strict=True):
            server = HTTPServer(host=address, port=port, threaded=True)
            server.expect_request("/hook", method="POST").respond_with_handler(landing.handle)
            server.start()
            started.append(server)
        yield port, *landings
    finally:
        for server in started:
            server.clear()
            server.stop()


def test_a_jobs_deliveries_all_go_to_the_address_its_name_had_at_the_first(
    two_addresses: tuple[int, Landing, Landing],
) -> None:
    """The pinning itself, with a resolver the test controls: it answers 127.0.0.2 once,
    then 127.0.0.3 for good."""
    port, pinned, moved = two_addresses
    pinned.answers = [503]  # the first delivery is tried again
    asked: list[str] = []

    async def resolve(host: str, port: int) -> list[str]:
        asked.append(host)
        return ["127.0.0.2"] if len(asked) == 1 else ["127.0.0.3"]

    async def deliver_one_job() -> None:
        settings = WebhookSettings(
            webhook_secret=SECRET, webhook_allow_hosts=[f"hooks.test:{port}"], webhook_backoff=0.01
        )
        sender = Sender(settings, SECRET, resolve=resolve)
        url = f"http://hooks.test:{port}/hook"
        record = JobRecord(id=str(uuid.uuid4()), inputs={"webhook": url, "webhook_events_filter": ["start",
                           "progress", "completed"]}, fingerprint=b"", created_at=time.time())  # fmt: skip
        sender.on_event("state", record.evolve(state=JobState.RUNNING, started_at=time.time()))
        sender.on_event("progress", record.evolve(state=JobState.RUNNING, step=1, total=2))
        sender.on_event("state", record.evolve(state=JobState.SUCCEEDED, step=2, total=2, finished_at=time.time()))
        await sender.close()

    asyncio.run(deliver_one_job())

    assert moved.got == []
    assert [host for host, _, _ in pinned.got] == [f"hooks.test:{port}"] * 4  # start twice, progress, completed
    assert asked == ["hooks.test"]


@pytest.fixture
def hosts_file(tmp_path: Path) -> tuple[Path, int]:
    """A hosts file for the server's own mount namespace: the machine's, and ``hooks.test``
    at 127.0.0.2 on the last line (at the offset returned), rewritten in place to flip it."""
    base = Path("/etc/hosts").read_text()
    base += "" if base.endswith("\n") else "\n"
    path = tmp_path / "hosts"
    path.write_text(base + "127.0.0.2 hooks.test\n")
    return path, len(base.encode())


def flip(hosts: Path, offset: int) -> None:
    """Move hooks.test to 127.0.0.3: one write of as many bytes, in place (the bind mount
    holds this inode), so no lookup ever sees the name missing."""
    fd = os.open(hosts, os.O_WRONLY)
    try:
        os.pwrite(fd, b"127.0.0.3", offset)
    finally:
        os.close(fd)


def namespaced_server(servers: list[Server], workdir: Path, hosts: Path, *args: str) -> Server:
    """A server whose /etc/hosts is ``hosts`` (``unshare -rm``: a mount namespace of its own,
    no root needed); the name resolves there through the C library, as any name would."""
    out = workdir / "outputs"
    cli = " ".join(shlex.quote(a) for a in [str(CLI), "--port", "0", "--output-dir", str(out), *args])
    script = f"mount --bind {shlex.quote(str(hosts))} /etc/hosts && exec {cli}"
    env = server_env(PARA_ATTN_SERVER_WEBHOOK_SECRET=SECRET)
    server = Server([], workdir, command=["unshare", "-rm", "--", "sh", "-c", script], env=env)
    servers.append(server)
    return server


def test_a_dns_answer_that_changes_mid_job_moves_no_delivery_and_ports_are_as_listed(
    servers: list[Server], tmp_path: Path, two_addresses: tuple[int, Landing, Landing],
    hosts_file: tuple[Path, int], report: Report,
) -> None:  # fmt: skip
    port, pinned, moved = two_addresses
    hosts, offset = hosts_file
    allowed = ["--webhook-allow-host", f"hooks.test:{port}", "--webhook-allow-host", "127.0.0.1"]
    server = namespaced_server(servers, tmp_path, hosts, *NOOP, *allowed, "--webhook-backoff", "0.05")
    pinned.on_first = lambda: flip(hosts, offset)  # before the first delivery is answered
    pinned.answers = [200, 503]  # the first progress is tried again, after the flip

    view = server.run(steps=4, step_seconds=0.5, webhook=f"http://hooks.test:{port}/hook")
    ended = lambda: any(state == "succeeded" for _, _, state in [*pinned.got, *moved.got])  # noqa: E731
    until(ended, 30, "the completed delivery")
    deliveries = len({message for _, message, _ in pinned.got})
    other_port = server.http.post("/v1/jobs", json={"webhook": f"http://127.0.0.1:{port}/hook"})
    default_port = AllowedHosts(["127.0.0.1", "hooks.test"])

    assert view["state"] == "succeeded"
    assert moved.got == [], moved.got
    assert {host for host, _, _ in pinned.got} == {f"hooks.test:{port}"}
    assert deliveries >= 3  # start, progress, completed
    assert other_port.status_code == 400
    assert other_port.json()["error"] == f"webhook: 127.0.0.1:{port} is not an allowed webhook host"
    default_port.check("http://127.0.0.1/hook")  # port 80
    default_port.check("https://hooks.test/hook")  # port 443
    with pytest.raises(ValueError, match=r"hooks\.test:8443 is not an allowed webhook host"):
        default_port.check("https://hooks.test:8443/hook")
    report.add(
        "Integrity",
        case="webhook host name moved from 127.0.0.2 to 127.0.0.3 (the server's /etc/hosts) after the job's "
        "first delivery, one try answered 503; an allow entry without a port",
        outcome=f"{len(pinned.got)} requests ({deliveries} deliveries) all to 127.0.0.2 "
        f"with Host hooks.test:{port}, 0 to 127.0.0.3; `127.0.0.1` allows port 80 only: :{port} is a 400",
    )
