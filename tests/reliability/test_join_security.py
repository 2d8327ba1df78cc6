"""``join`` and the stores of a group across hosts, tried as an attacker would.

- A fake server at the URL a host joins never sees the join token: ``join`` asks it to prove
  that it holds the token, it cannot, and ``join`` exits 2 having started nothing.
- A relay between a host and the real server that alters the spec (a pickled predictor put
  in) is caught by the spec's signature: ``join`` exits 2, nothing is unpickled.
- The rendezvous store refuses writers that do not prove the token (64 x 4 MiB: no growth).
- A 2-node ``--nnodes`` group on loopback listens on loopback only, every process of it.
- A generated join token is never logged whole: it is in a 0600 file the log names.
"""

from __future__ import annotations

import base64
import ipaddress
import json
import os
import pickle
import socket
import stat
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import msgspec
import psutil
import pytest

from para_attn_server.cluster.spec import JOIN_ROUTE, JoinSpec
from para_attn_server.testing import CLI, LogWatcher, Server, free_port, server_env
from para_attn_server.workers.executor import RankSpec, Rendezvous
from tests.integration.support import Join
from tests.reliability.support import Report

pytestmark = pytest.mark.timeout(300)

TOKEN = "join-token-of-the-security-tests-" + os.urandom(8).hex()
MIB = 1024 * 1024


class Marker:
    """Unpickled, it creates a file: the proof that a pickle from the network was loaded."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, ...]:
        return (open, (str(self.path), "w"))


def start_join(url: str, *args: str, env: dict[str, str] | None = None) -> tuple[subprocess.Popen[str], LogWatcher]:
    process = subprocess.Popen(
        [str(CLI), "join", url, *args], env=env or server_env(), stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    return process, LogWatcher(process)


def join_until_it_exits(url: str, name: str) -> tuple[int, LogWatcher]:
    """``join`` to ``url`` with the token, waited for (killed after 120 s); its exit code and log."""
    process, log = start_join(url, "--token", TOKEN, "--num-devices", "1", "--name", name)
    try:
        code = process.wait(120)
    finally:
        if process.poll() is None:
            process.kill()
    log.wait_closed(10)
    return code, log


class Listener:
    """A TCP listener that counts the connections it gets (and says nothing)."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.accepted = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted += 1
            conn.close()

    def close(self) -> None:
        self.sock.close()


def old_style_spec(rendezvous_port: int, marker: Path) -> bytes:
    """What a server would answer a join: a group whose predictor is a pickle (``Marker``)."""
    spec = RankSpec(
        world_size=1, control_host="127.0.0.1", control_port=free_port(), token="t", generation=1,
        predictor_pickle=pickle.dumps(Marker(marker)),
        rendezvous=Rendezvous(endpoint=f"127.0.0.1:{rendezvous_port}", run_id="fake", nnodes=1, join_timeout=30),
    )  # fmt: skip
    joined = JoinSpec(
        server_version="0", group=0, state="starting", generation=1, nproc_per_node=1, spec=spec, plugins=[]
    )
    return msgspec.json.encode(joined)


@pytest.fixture
def fake_server(tmp_path: Path) -> Iterator[tuple[str, list[dict[str, Any]], Listener, Path]]:
    """A server that answers every join call as the real one would, without the token: it
    signs with a random key. (url, what it was sent, its rendezvous listener, the marker)"""
    seen: list[dict[str, Any]] = []
    rendezvous = Listener()
    marker = tmp_path / "unpickled"

    class Handler(BaseHTTPRequestHandler):
        def _answer(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            seen.append({"method": self.command, "path": self.path, "headers": dict(self.headers), "body": body})
            if self.path.split("?")[0].rstrip("/").endswith("/auth"):  # a challenge: a made-up proof
                payload = json.dumps({"nonce": os.urandom(32).hex(), "proof": os.urandom(32).hex()}).encode()
            else:
                payload = old_style_spec(rendezvous.port, marker)
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.send_header("X-Join-Mac", os.urandom(32).hex())
            self.end_headers()
            self.wfile.write(payload)

        do_GET = do_POST = _answer  # noqa: N815 (http.server's names)

        def log_message(self, *args: Any) -> None:
            pass

    http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=http.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{http.server_address[1]}", seen, rendezvous, marker
    finally:
        http.shutdown()
        http.server_close()
        rendezvous.close()


def test_a_fake_server_never_sees_the_token_and_join_starts_no_rank(
    fake_server: tuple[str, list[dict[str, Any]], Listener, Path], report: Report
) -> None:
    url, seen, rendezvous, marker = fake_server
    started = time.monotonic()
    code, log = join_until_it_exits(url, "victim")
    took = time.monotonic() - started

    sent = json.dumps([{**row, "body": row["body"].decode("latin-1")} for row in seen])
    assert seen, log.text  # it was asked
    assert TOKEN not in sent, "the fake server was sent the join token"
    assert code == 2, log.text
    assert "did not prove that it holds the join token" in log.text
    assert rendezvous.accepted == 0  # no agent started: it would meet at the rendezvous
    assert not marker.exists()
    report.add(
        "Integrity",
        case="join against a fake server (answers as the real one, signs without the token)",
        outcome=f"join exited {code} after {took:.1f} s, {len(seen)} request(s) sent, none with the token; "
        f"no agent, no rank, nothing unpickled",
    )


# ---- against the real server ----------------------------------------------------------------


class TamperingRelay:
    """An HTTP relay to the real server that puts a pickled predictor into every spec it
    passes on, signatures left as they were."""

    def __init__(self, target: str, marker: Path) -> None:
        self.altered = 0
        relay = self

        class Handler(BaseHTTPRequestHandler):
            def _relay(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "content-length")}
                answer = httpx.request(self.command, target + self.path, headers=headers, content=body, timeout=90)
                content = answer.content
                if self.path.startswith(JOIN_ROUTE + "?") or self.path == JOIN_ROUTE:
                    document = json.loads(content)
                    if isinstance(document, dict) and "spec" in document:
                        document["spec"]["predictor_pickle"] = base64.b64encode(pickle.dumps(Marker(marker))).decode()
                        document["spec"]["predictor"] = None
                        content = json.dumps(document).encode()
                        relay.altered += 1
                self.send_response(answer.status_code)
                for key, value in answer.headers.items():
                    if key.lower() not in ("content-length", "transfer-encoding", "connection", "content-encoding"):
                        self.send_header(key, value)
                self.send_header("Content-Length", str(len(content)))
                self.end_headers()
                self.wfile.write(content)

            do_GET = do_POST = _relay  # noqa: N815 (http.server's names)

            def log_message(self, *args: Any) -> None:
                pass

        self.http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.http.server_address[1]}"
        threading.Thread(target=self.http.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.http.shutdown()
        self.http.server_close()


@pytest.fixture(scope="module")
def group(launch: Callable[..., Server]) -> Server:
    """A --nnodes 2 group (torchrun, 1 rank a node) whose second node has not joined yet."""
    return launch(
        "--model", "noop", "--executor", "torchrun", "--nnodes", "2", "--num-devices", "1",
        "--join-token", TOKEN, "--rdzv-endpoint", f"127.0.0.1:{free_port()}", wait_ready=False,
    )  # fmt: skip


def test_a_relay_that_alters_the_spec_is_caught_and_nothing_is_unpickled(
    group: Server, tmp_path: Path, report: Report
) -> None:
    marker = tmp_path / "unpickled"
    relay = TamperingRelay(group.url, marker)
    try:
        code, log = join_until_it_exits(relay.url, "relayed")
    finally:
        relay.close()
    assert relay.altered >= 1
    assert code == 2, log.text
    assert "altered" in log.text
    assert not marker.exists()
    report.add(
        "Integrity",
        case="join through a relay that puts a pickled predictor into the spec",
        outcome=f"the spec's signature failed: join exited {code}, no agent started, nothing unpickled",
    )


@pytest.fixture(scope="module")
def joined(group: Server) -> Iterator[tuple[Server, Join]]:
    join = Join(group.url, TOKEN, "--num-devices", "1", "--name", "host-b")
    try:
        group.wait_ready(180)
        yield group, join
    finally:
        join.stop()


def tree(pid: int) -> list[psutil.Process]:
    root = psutil.Process(pid)
    return [root, *root.children(recursive=True)]


def role(process: psutil.Process) -> str:
    command = " ".join(process.cmdline())
    for module, name in (
        ("cluster.agent", "agent"),
        ("distributed.run", "agent"),
        ("rank.worker", "rank"),
        (" join ", "join"),
    ):
        if module in command:
            return name
    return "server" if "para-attn-server" in command else command[:40]


def test_a_two_node_group_on_loopback_listens_on_loopback_only(joined: tuple[Server, Join], report: Report) -> None:
    server, join = joined
    assert server.run(steps=2)["state"] == "succeeded"
    processes = tree(server.process.pid) + tree(join.process.pid)
    listening: list[tuple[str, str, int]] = []
    for process in processes:
        try:
            connections, name = process.net_connections("inet"), role(process)
        except psutil.NoSuchProcess:
            continue
        listening += [(name, c.laddr.ip, c.laddr.port) for c in connections if c.status == psutil.CONN_LISTEN]
    beyond = [row for row in listening if not ipaddress.ip_address(row[1]).is_loopback]
    assert not beyond, f"listening beyond loopback: {beyond}"
    roles = {name for name, _, _ in listening}
    assert {"server", "join", "rank"} <= roles, listening  # HTTP, control, the gate; the forwarder; gloo
    counts = ", ".join(f"{name} {sum(row[0] == name for row in listening)}" for name in sorted(roles))
    report.add(
        "Integrity",
        case="listening sockets of a 2-node --nnodes group on loopback (torchrun, every process of both nodes)",
        outcome=f"{len(listening)} in {len(processes)} processes ({counts}), all on 127.0.0.0/8",
    )


def test_a_torchrun_group_on_one_host_listens_on_loopback_only(launch: Callable[..., Server], report: Report) -> None:
    server = launch("--model", "noop", "--executor", "torchrun", "--num-devices", "2")
    assert server.run(steps=2)["state"] == "succeeded"
    processes = tree(server.process.pid)
    listening = [
        (role(process), c.laddr.ip)
        for process in processes
        for c in process.net_connections("inet")
        if c.status == psutil.CONN_LISTEN
    ]
    beyond = [row for row in listening if not ipaddress.ip_address(row[1]).is_loopback]
    assert not beyond, f"listening beyond loopback: {beyond}"
    report.add(
        "Integrity",
        case="listening sockets of a torchrun group on one host (2 ranks)",
        outcome=f"{len(listening)} in {len(processes)} processes, all on 127.0.0.0/8 (the rendezvous store "
        "hosted by the executor on loopback, not torchrun's --standalone one on every interface)",
    )


def _store_writer(port: int, key: str, results: list[str]) -> None:
    from torch.distributed import TCPStore  # type: ignore[attr-defined]

    try:
        store = TCPStore("127.0.0.1", port, None, False, timedelta(seconds=10))
        store.set(key, "x" * (4 * MIB))
        results.append("stored" if len(store.get(key)) == 4 * MIB else "lost")
    except Exception as exc:
        results.append(type(exc).__name__)


def test_the_rendezvous_store_refuses_writers_that_do_not_authenticate(
    joined: tuple[Server, Join], report: Report
) -> None:
    server, _ = joined
    port = int(server.log.wait_for(r"rendezvous for joining hosts at 127\.0\.0\.1:(\d+)")[1])
    before = psutil.Process(server.process.pid).memory_info().rss
    results: list[str] = []
    writers = [threading.Thread(target=_store_writer, args=(port, f"junk-{i}", results)) for i in range(64)]
    for writer in writers:
        writer.start()
    for writer in writers:
        writer.join(120)
    grown = (psutil.Process(server.process.pid).memory_info().rss - before) / MIB
    stored = results.count("stored")
    assert len(results) == 64
    assert stored == 0, f"{stored} of 64 unauthenticated writes stored"
    assert grown < 32, f"the server grew by {grown:.0f} MiB"
    assert server.run(steps=2)["state"] == "succeeded"  # the group is unharmed
    report.add(
        "Integrity",
        case="rendezvous store (--rdzv-endpoint): 64 writers without the token, 4 MiB each",
        outcome=f"{stored} of 64 stored, server RSS {grown:+.0f} MiB; the group kept serving",
    )


# ---- the join token ---------------------------------------------------------------------------


def test_a_generated_join_token_is_never_logged_whole(launch: Callable[..., Server], report: Report) -> None:
    server = launch("--model", "noop", "--num-devices", "0", wait_ready=False)
    line = server.log.wait_for(r"on each run: (para-attn-server join .*)")
    command = line[1]
    path = server.output_dir / ".jobs" / "join-token"
    token = path.read_text().strip()
    assert len(token) >= 32
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert token not in server.log.text
    assert f"--token-file {path}" in command
    assert "--token " not in command
    process, log = start_join(
        server.url, "--token-file", str(path), "--num-devices", "1", "--group-size", "1", "--name", "from-file"
    )
    try:
        view = server.run(steps=2)
        assert (view["state"], view["host"]) == ("succeeded", "from-file")
        with open(f"/proc/{process.pid}/cmdline", "rb") as f:
            assert token.encode() not in f.read()
    finally:
        process.terminate()
        process.wait(60)
        log.wait_closed(10)
    assert token not in log.text
    report.add(
        "Integrity",
        case="a generated join token",
        outcome=f"never logged whole (a {len(token)}-character token; the log names its 0600 file "
        f"{path.relative_to(server.output_dir)} and a fingerprint); join reads it with --token-file",
    )
