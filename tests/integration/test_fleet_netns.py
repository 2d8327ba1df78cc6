"""A joined host in a network of its own: the join runs in a network namespace joined to this
one by a veth pair (10.231.0.1 here, 10.231.0.2 there), so it reaches the server only over
that link, as a second machine would. Needs root (CI runs as root) and ``ip``."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest

from para_attn_server.testing import Server
from tests.integration.support import Join
from tests.integration.test_fleet import TOKEN, wait_serving

pytestmark = [
    pytest.mark.timeout(300),
    pytest.mark.skipif(os.geteuid() != 0 or shutil.which("ip") is None, reason="needs root and iproute2"),
]
NETNS = f"pas-{os.getpid()}"
HERE, THERE = "10.231.0.1", "10.231.0.2"
VETH = f"pas{os.getpid() % 100000}"  # interface names: 15 characters at most


def ip(*args: str, netns: str | None = None) -> None:
    prefix = ["ip", "netns", "exec", netns] if netns else []
    subprocess.run([*prefix, "ip", *args], check=True, capture_output=True)


@pytest.fixture(scope="module")
def link() -> Iterator[None]:
    try:
        ip("netns", "add", NETNS)
    except subprocess.CalledProcessError as exc:
        pytest.skip(f"cannot create a network namespace here: {exc.stderr.decode().strip()}")
    try:
        ip("link", "add", f"{VETH}a", "type", "veth", "peer", "name", f"{VETH}b")
        ip("link", "set", f"{VETH}b", "netns", NETNS)
        ip("addr", "add", f"{HERE}/24", "dev", f"{VETH}a")
        ip("link", "set", f"{VETH}a", "up")
        ip("addr", "add", f"{THERE}/24", "dev", f"{VETH}b", netns=NETNS)
        ip("link", "set", f"{VETH}b", "up", netns=NETNS)
        ip("link", "set", "lo", "up", netns=NETNS)  # the host's own rendezvous store is on its loopback
        yield
    finally:
        subprocess.run(["ip", "link", "del", f"{VETH}a"], check=False, capture_output=True)
        subprocess.run(["ip", "netns", "del", NETNS], check=False, capture_output=True)


def test_a_host_in_its_own_network_joins_over_the_link_and_runs_a_job(link: None, launch: Any) -> None:
    server: Server = launch(
        "--model", "noop", "--num-devices", "0", "--join-token", TOKEN, "--host", HERE, "--control-host", HERE,
        wait_ready=False,
    )  # fmt: skip
    assert server.url.startswith(f"http://{HERE}:")
    # From the namespace the server's loopback does not exist: only the link leads to it.
    connect = f"import socket; socket.create_connection(('127.0.0.1', {server.port}), timeout=2)"
    unreachable = subprocess.run(
        ["ip", "netns", "exec", NETNS, sys.executable, "-c", connect], check=False, capture_output=True
    )
    assert unreachable.returncode != 0
    there = Join(server.url, TOKEN, "--num-devices", "1", "--group-size", "1", "--name", "netns-host",
                 prefix=("ip", "netns", "exec", NETNS))  # fmt: skip
    try:
        wait_serving(server, "netns-host", groups=1)
        view = server.run(steps=3, step_seconds=0.05)
        assert (view["state"], view["host"]) == ("succeeded", "netns-host")
        ranks = [row for row in server.status()["ranks"] if row["state"] in ("ready", "busy")]
        assert len(ranks) == 1
    finally:
        there.stop()
    assert there.process.returncode == 0
