"""Integrity: nothing acknowledged is lost, nothing broken is served, nothing outside is touched.

Each test plants one of the unlucky or hostile conditions the server must survive, and checks
what clients see: a full disk (a 4 MiB tmpfs), the output directory deleted, a SIGKILL right
after an answer, a symlink planted between accept and run, a journal row edited to point
elsewhere, strangers on the ranks' control port, clients that never finish a request or read
slowly.
"""

from __future__ import annotations

import hashlib
import os
import shlex
import shutil
import signal
import socket
import sqlite3
import struct
import uuid
from collections.abc import Callable
from pathlib import Path

import httpx
import msgspec
import psutil
import pytest

from para_attn_server.protocol import Hello, encode_frame
from para_attn_server.records import JobRecord
from para_attn_server.testing import CLI, Server, pid_gone
from tests.reliability.support import Report, peak_rss, stalled_readers, until

pytestmark = pytest.mark.timeout(240)

SIZE = 600_000  # ten of them do not fit in 4 MiB
NOOP = ["--model", "noop", "--num-devices", "1"]


def no_server_paths(text: str, server: Server) -> bool:
    return str(server.workdir) not in text and "/tmp" not in text and "Traceback" not in text


# ---- a full disk, a deleted directory -----------------------------------------------------------


def tmpfs_server(servers: list[Server], workdir: Path, *args: str) -> Server:
    """A server whose output directory is a 4 MiB tmpfs, mounted in a mount namespace of its
    own (``unshare -rm``: no root needed); its files stay visible through /proc/PID/root."""
    out = workdir / "outputs"
    out.mkdir(parents=True)
    cli = " ".join(shlex.quote(a) for a in [str(CLI), "--port", "0", "--output-dir", str(out), *args])
    script = f"mount -t tmpfs -o size=4m tmpfs {shlex.quote(str(out))} && exec {cli}"
    server = Server([], workdir, command=["unshare", "-rm", "--", "sh", "-c", script])
    servers.append(server)
    return server


def test_a_full_disk_never_serves_a_broken_output(servers: list[Server], tmp_path: Path, report: Report) -> None:
    server = tmpfs_server(servers, tmp_path, *NOOP, "--output-memory-bytes", "0")
    answers = [server.http.post("/v1/jobs", params={"wait": 60}, json={"size": SIZE}) for _ in range(10)]

    unexpected = [(answer.status_code, answer.text) for answer in answers if answer.status_code not in (201, 503)]
    assert not unexpected, f"{unexpected}\n{server.log.tail(80)}"
    acknowledged = [answer.json()["id"] for answer in answers if answer.status_code == 201]
    assert acknowledged
    digests, gone = set(), 0
    for job_id in acknowledged:
        view = server.http.get(f"/v1/jobs/{job_id}").json()  # every acknowledged job is known
        download = server.http.get(f"/v1/jobs/{job_id}/output")
        if download.status_code == 200:
            assert len(download.content) == SIZE
            digests.add(hashlib.sha256(download.content).hexdigest())
        else:
            assert (view["state"], download.status_code) == ("succeeded", 410), download.text
            assert "the output is gone" in download.json()["error"]
            assert no_server_paths(download.text, server)
            gone += 1
    assert len(digests) <= 1  # the noop predictor returns the same bytes for one size
    assert gone or len(acknowledged) < len(answers)  # the disk did fill up
    refused = [answer for answer in answers if answer.status_code == 503]
    for answer in refused:
        assert no_server_paths(answer.text, server)
    ready = server.http.get("/health/ready")
    assert ready.status_code == 503
    assert "output directory" in ready.json()["reason"]
    jobs_dir = Path(f"/proc/{server.process.pid}/root") / str(server.output_dir).lstrip("/") / ".jobs"
    sizes = [path.stat().st_size for path in jobs_dir.glob("*.bin")]
    assert set(sizes) <= {SIZE}, sizes  # whole files or none
    assert not list(jobs_dir.glob(".tmp-*"))
    report.add(
        "Integrity",
        case="output directory on a 4 MiB tmpfs, ten 600,000-byte jobs",
        outcome=f"{len(acknowledged)} acknowledged, {len(refused)} refused with 503, {gone} downloads 410 (gone), "
        f"{len(acknowledged) - gone} whole; files on disk: {len(sizes)}, all whole; /health/ready 503",
    )


def test_a_deleted_output_directory_fails_readiness_and_answers_410_without_paths(
    servers: list[Server], tmp_path: Path, report: Report
) -> None:
    server = Server([*NOOP, "--output-memory-bytes", "0"], tmp_path)
    servers.append(server)
    before = server.run(size=1000)
    # Its copy is written behind the answer: delete the directory once the copy is in place,
    # or the writer's files appear in it while rmtree empties it.
    until(lambda: any(server.output_dir.rglob(f"{before['id']}.*")), 30, "the first output's copy on disk")
    second = server.run(size=1000)  # evicts the first from the (zero-byte) output cache
    until(lambda: any(server.output_dir.rglob(f"{second['id']}.*")), 30, "the second output's copy on disk")
    shutil.rmtree(server.output_dir)
    after = server.http.post("/v1/jobs", params={"wait": 60}, json={"size": 1000})
    assert after.status_code == 503, after.text  # nothing acknowledged that the journal cannot keep
    job_ids = [before["id"]]

    for job_id in job_ids:
        for path in (f"/v1/jobs/{job_id}/output", f"/get_output/{job_id}"):
            response = server.http.get(path)
            assert response.status_code == 410, (path, response.text)
            assert no_server_paths(response.text, server)
    ready = server.http.get("/health/ready")
    assert ready.status_code == 503
    assert "output directory cannot be written" in ready.json()["reason"]
    report.add(
        "Integrity",
        case="output directory deleted while serving",
        outcome="earlier and later outputs answer 410 (gone) without paths; /health/ready 503 naming the directory",
    )


# ---- acknowledged means recorded ----------------------------------------------------------------


def test_a_job_answered_just_before_a_sigkill_is_known_after_the_restart(
    servers: list[Server], tmp_path: Path, report: Report
) -> None:
    faulty = ["--model", "tests.predictors:Faulty", "--num-devices", "1"]
    hold = tmp_path / "hold"
    body = {"hold": str(hold)}  # queued or running when the server dies
    submits: dict[str, Callable[[Server], httpx.Response]] = {
        "PUT /v1/jobs/{id}": lambda server: server.http.put(f"/v1/jobs/{uuid.uuid4()}", json=body),
        "POST /generate": lambda server: server.http.post("/generate", json=body),
        "POST /v1/jobs": lambda server: server.http.post("/v1/jobs", json=body),
    }
    answered: dict[str, str] = {}
    for route, submit in submits.items():
        server = Server(faulty, tmp_path)
        servers.append(server)
        ranks = server.rank_pids()
        answer = submit(server)
        os.kill(server.process.pid, signal.SIGKILL)  # the moment the answer is in
        assert answer.status_code in (201, 202), answer.text
        answered[route] = answer.json().get("request_id") or answer.json()["id"]
        server.process.wait(30)
        until(lambda ranks=ranks: all(pid_gone(pid) for pid in ranks), 30, "ranks exit once the server is gone")

    hold.touch()  # from now on the jobs may finish
    last = Server(faulty, tmp_path)
    servers.append(last)
    for route, job_id in answered.items():
        view = last.http.get(f"/v1/jobs/{job_id}")
        assert view.status_code == 200, (route, view.text)
        ended = last.wait(job_id)
        # Each restart queued the unfinished jobs again; the first job lived through three,
        # and a job the server died under twice is given up.
        assert (ended["state"], ended.get("error")) in {("succeeded", None), ("failed", "server restarted")}, route
    report.add(
        "Integrity",
        case="SIGKILL the moment a submit is answered (PUT, /generate, POST /v1/jobs)",
        outcome="after the restart every answered job is known, queued again and run (given up, 'server "
        "restarted', after the server died under it twice)",
    )


# ---- files the server did not write --------------------------------------------------------------


def test_an_original_style_predictor_cannot_be_steered_outside_by_a_late_symlink(
    launch: Callable[..., Server], tmp_path: Path, report: Report
) -> None:
    server = launch("--model", "tests.predictors:LegacyWriter", "--num-devices", "1")
    plain = server.http.post("/generate", json={"output_path": "plain/x.txt"}).json()["request_id"]
    server.wait(plain)
    assert server.http.get(f"/get_output/{plain}").json() == {"output": "plain/x.txt", "file_type": "txt"}
    assert (server.output_dir / "plain" / "x.txt").read_text() == "written"

    hold, outside = tmp_path / "hold", tmp_path / "outside"
    outside.mkdir()
    job_id = server.http.post("/generate", json={"output_path": "late/x.txt", "hold": str(hold)}).json()["request_id"]
    server.wait_running(job_id)
    (server.output_dir / "late").symlink_to(outside, target_is_directory=True)
    hold.touch()
    view = server.wait(job_id)

    assert view["state"] == "failed"
    assert view["error"] == "could not write the output: output_path: leads outside the server's output directory"
    assert list(outside.iterdir()) == []
    not_a_string = server.http.post("/generate", json={"output_path": 5})
    assert not_a_string.status_code == 400
    assert not_a_string.json()["field"] == "output_path"
    report.add(
        "Integrity",
        case="original-style predictor writing output_path, symlink planted after accept",
        outcome="it wrote a private file; the server's confined write refused the link: failed, nothing outside; "
        "a non-string output_path is a 400",
    )


def test_a_journal_row_edited_to_point_outside_is_not_served(
    servers: list[Server], tmp_path: Path, report: Report
) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("not for clients")
    first = Server(NOOP, tmp_path)
    servers.append(first)
    job = first.run(size=100)
    assert first.stop() == 0
    journal = first.output_dir / ".jobs" / "jobs.sqlite3"
    with sqlite3.connect(journal) as db:
        (blob,) = db.execute("SELECT record FROM jobs WHERE id = ?", (job["id"],)).fetchone()
        record = msgspec.msgpack.decode(blob, type=JobRecord)
        edited = record.evolve(output_file=str(secret), output_size=secret.stat().st_size)
        db.execute("UPDATE jobs SET record = ? WHERE id = ?", (msgspec.msgpack.encode(edited), job["id"]))

    second = Server(NOOP, tmp_path)
    servers.append(second)
    second.log.wait_for(f"job {job['id']}: its record names a file this server does not write")
    download = second.http.get(f"/v1/jobs/{job['id']}/output")
    assert download.status_code == 410
    assert "not for clients" not in download.text
    report.add(
        "Integrity",
        case="journal row edited to name a file outside the output directory",
        outcome="dropped with a warning at restart; the output answers 410",
    )


# ---- the ranks' control port ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def noop(launch: Callable[..., Server]) -> Server:
    return launch(*NOOP, "--header-timeout", "2")


def control_port(server: Server) -> int:
    return int(server.log.wait_for(r"worker group 0: ranks connect to \S+:(\d+)")[1])


def closed_by_server(sock: socket.socket, timeout: float) -> bool:
    sock.settimeout(timeout)
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True


def test_an_oversized_hello_is_refused_before_it_is_read(noop: Server, report: Report) -> None:
    rss = psutil.Process(noop.process.pid).memory_info().rss
    with socket.create_connection(("127.0.0.1", control_port(noop))) as sock:
        sock.sendall(struct.pack(">I", 1 << 30) + b"\0" * 65536)
        assert closed_by_server(sock, 30)
    grown = psutil.Process(noop.process.pid).memory_info().rss - rss
    assert grown < 64 * 1024 * 1024, grown
    assert noop.run(size=10)["state"] == "succeeded"
    outcome = f"closed unread; RSS +{grown >> 20} MiB"
    report.add("Integrity", case="control port: hello frame declaring 1 GiB", outcome=outcome)


def test_a_hello_with_a_non_ascii_token_is_refused_without_a_traceback(noop: Server) -> None:
    hello = Hello(rank=0, world_size=1, token="jeton-ñ" * 4, generation=1, pid=1, hostname="stranger")
    with socket.create_connection(("127.0.0.1", control_port(noop))) as sock:
        sock.sendall(encode_frame(hello))
        assert closed_by_server(sock, 30)
    assert "Traceback" not in noop.log.text


# ---- HTTP clients that never finish, or read slowly ------------------------------------------------


@pytest.mark.parametrize("sent", [b"", b"GET /health/live HTTP/1.1\r\nHost: localhost\r\n"], ids=["nothing", "half"])
def test_a_client_that_never_finishes_its_request_head_is_dropped(noop: Server, sent: bytes) -> None:
    with socket.create_connection(("127.0.0.1", noop.port)) as sock:
        sock.sendall(sent)
        assert closed_by_server(sock, 30)  # --header-timeout 2


def test_slow_readers_of_a_large_base64_output_do_not_hold_it_in_memory(
    launch: Callable[..., Server], report: Report
) -> None:
    size = 64 * 1024 * 1024
    server = launch(*NOOP, "--output-memory-bytes", "0")
    job_id = server.run(size=size)["id"]
    assert server.http.get(f"/get_output/{job_id}").status_code == 200  # the file is checked once
    before = peak_rss(server.process.pid)
    with stalled_readers(server, f"/get_output/{job_id}", 4):
        grown = peak_rss(server.process.pid) - before
    assert grown < 100 * 1024 * 1024, grown  # whole bodies would be 4 x 85 MiB
    report.add(
        "Integrity",
        case="4 clients that request a 64 MiB output's /get_output and read no further",
        outcome=f"peak server RSS +{grown >> 20} MiB (the base64 body is streamed in chunks)",
    )
