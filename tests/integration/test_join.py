"""One group across two "hosts": the server (``--nnodes 2``, torchrun, node of 1 rank) and a
``para-attn-server join`` process (1 rank), both on 127.0.0.1. torch.distributed elastic's
c10d rendezvous joins them; the server hosts it."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from para_attn_server.cluster.auth import JoinAuth, ProofError
from para_attn_server.cluster.spec import JOIN_ROUTE, JoinSpec
from para_attn_server.protocol import Hello, encode_frame
from para_attn_server.testing import Server, free_port, server_env
from tests.integration.support import Join

pytestmark = pytest.mark.timeout(300)

TOKEN = "join-token-for-the-tests"
NODE = "host-b"
IMAGE = {"prompt": "a cat on two hosts", "seed": 11, "num_inference_steps": 3}


@pytest.fixture(scope="module")
def two_hosts(launch) -> Iterator[tuple[Server, list[Join]]]:
    """The server and the joined host's processes (the last one is the live one)."""
    server = launch(
        "--model", "tiny", "--executor", "torchrun", "--nnodes", "2", "--num-devices", "1",
        "--join-token", TOKEN, "--rdzv-endpoint", f"127.0.0.1:{free_port()}", wait_ready=False,
    )  # fmt: skip
    joins = [Join(server.url, TOKEN, "--num-devices", "1", "--name", NODE)]
    try:
        server.wait_ready(180)
        yield server, joins
    finally:
        for join in joins:
            join.stop()


def join_spec(server: Server) -> JoinSpec:
    import msgspec

    with httpx.Client(base_url=server.url, auth=JoinAuth(TOKEN, JOIN_ROUTE), timeout=60) as signed:
        response = signed.get(JOIN_ROUTE)
    assert response.status_code == 200, response.text
    return msgspec.json.decode(response.content, type=JoinSpec)


def test_the_server_logs_the_join_command(two_hosts: tuple[Server, list[Join]]) -> None:
    server, _ = two_hosts
    line = server.log.wait_for(r"on each run: (para-attn-server join .*)")
    hint = "(with the join token in $PARA_ATTN_SERVER_JOIN_TOKEN, or --token-file FILE)"
    assert line[1] == f"para-attn-server join {server.url} --num-devices 1 {hint}"  # the token never printed


def test_the_group_spans_both_hosts(two_hosts: tuple[Server, list[Join]]) -> None:
    server, joins = two_hosts
    status = server.status()
    assert status["ready"] is True
    assert len(status["groups"]) == 1
    assert sorted(row["rank"] for row in status["ranks"]) == [0, 1]
    assert joins[-1].log.wait_for(r"joining generation 1 of group 0")


def test_the_image_equals_the_single_host_image_for_the_same_seed(
    two_hosts: tuple[Server, list[Join]], tiny_server: Server
) -> None:
    server, _ = two_hosts
    job = server.run(**IMAGE)
    reference = tiny_server.run(**IMAGE)  # 2 ranks on one host, spawned by multiprocessing
    assert (job["state"], reference["state"]) == ("succeeded", "succeeded")
    assert server.output(job["id"]) == tiny_server.output(reference["id"])


def test_the_join_route_needs_the_join_token(two_hosts: tuple[Server, list[Join]]) -> None:
    server, _ = two_hosts
    assert server.http.get(JOIN_ROUTE).status_code == 401  # unsigned
    assert server.http.get(JOIN_ROUTE, headers={"X-Join-Token": TOKEN}).status_code == 401  # the token is never taken
    with httpx.Client(base_url=server.url, auth=JoinAuth("wrong", JOIN_ROUTE)) as wrong, pytest.raises(ProofError):
        wrong.get(JOIN_ROUTE)
    spec = join_spec(server)
    assert (spec.generation, spec.nproc_per_node, spec.spec.world_size) == (1, 1, 2)
    assert spec.spec.join_token == ""  # the host makes the ranks' proof; the server does not send it


def test_a_rank_hello_without_the_join_token_is_refused(two_hosts: tuple[Server, list[Join]]) -> None:
    server, _ = two_hosts
    spec = join_spec(server).spec
    hello = Hello(1, spec.world_size, spec.token, spec.generation, os.getpid(), "intruder")  # no join token
    with socket.create_connection(("127.0.0.1", spec.control_port), timeout=10) as sock:
        sock.sendall(encode_frame(hello))
        assert sock.recv(1) == b""  # closed without a word
    assert server.status()["ready"] is True


def test_join_refuses_a_wrong_token_another_rank_count_and_other_plugins(
    two_hosts: tuple[Server, list[Join]], tmp_path: Path
) -> None:
    server, _ = two_hosts
    extra = tmp_path / "site"
    (extra / "fakeplug-1.0.dist-info").mkdir(parents=True)
    (extra / "fakeplug_mod.py").write_text('"""A plugin installed on one host only."""\n')
    (extra / "fakeplug-1.0.dist-info" / "METADATA").write_text("Metadata-Version: 2.1\nName: fakeplug\nVersion: 1.0\n")
    (extra / "fakeplug-1.0.dist-info" / "entry_points.txt").write_text("[para_attn_server]\nfakeplug = fakeplug_mod\n")
    path = os.pathsep.join([str(extra), os.environ["PYTHONPATH"]])
    refused = {
        "token": Join(server.url, "wrong", "--num-devices", "1"),
        "ranks": Join(server.url, TOKEN, "--num-devices", "2"),
        "plugins": Join(server.url, TOKEN, "--num-devices", "1", env=server_env(PYTHONPATH=path)),
    }
    codes = {name: join.wait(120) for name, join in refused.items()}

    assert codes == {"token": 2, "ranks": 2, "plugins": 2}
    assert "did not prove that it holds the join token" in refused["token"].log.text
    assert "the group's nodes run 1 rank(s) each; this host offers 2" in refused["ranks"].log.text
    extra_plugin = "plugin 'fakeplug' (fakeplug 1.0) is installed here but not loaded by the server"
    assert extra_plugin in refused["plugins"].log.text
    assert server.status()["ready"] is True


def test_sigkill_of_join_requeues_the_job_naming_the_node_and_a_new_join_runs_it_again(
    two_hosts: tuple[Server, list[Join]],
) -> None:
    server, joins = two_hosts
    generation = join_spec(server).generation
    job_id = server.submit(prompt="a long one", width=128, height=128, num_inference_steps=50)
    server.wait_running(job_id, step=1)
    since = len(server.log.lines)
    joins[-1].kill()

    # Its run was cut short by the lost host: back in the queue, waiting for the group.
    # (the stream opens with the job's view: it may already show the cut-short run)
    cut = next(
        data.get("attempts", [{}])[0] if event == "state" else data
        for event, data in server.events(job_id)
        if event == "requeued" or (event == "state" and data.get("attempts"))
    )
    assert f"node {NODE} left" in cut["fault"]
    ready = httpx.get(f"{server.url}/health/ready")
    assert ready.status_code == 503
    assert server.status()["ready"] is False
    assert server.http.get(f"/v1/jobs/{job_id}").json()["state"] == "queued"

    joins.append(Join(server.url, TOKEN, "--num-devices", "1", "--name", NODE))
    server.log.wait_for(rf"worker group generation {generation + 1} ready", timeout=180, since=since)
    assert httpx.get(f"{server.url}/health/ready").status_code == 200
    job = server.wait(job_id, timeout=180)
    assert job["state"] == "succeeded"
    assert [attempt["fault"] is None for attempt in job["attempts"]] == [False, True]
    after = server.run(**IMAGE)
    assert after["state"] == "succeeded"
