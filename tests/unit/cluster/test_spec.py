"""cluster / rendezvous / server layout: what a joining host and the server agree on, the
join route's long poll, and the layouts the server refuses at start."""

from __future__ import annotations

import asyncio
import re
import socket
from dataclasses import dataclass, field
from typing import Any

import msgspec
import pytest

from para_attn_server import cli
from para_attn_server.cluster.rendezvous import ClusterHost
from para_attn_server.cluster.spec import PluginDist, agent_command, plugin_differences, reachable, split_endpoint
from para_attn_server.errors import ConfigurationError
from para_attn_server.plugin.manager import AUTOLOAD_ENV
from para_attn_server.server import ParaAttentionServer
from para_attn_server.settings import JOIN_TOKEN_ENV
from para_attn_server.workers.executor import RankSpec, Rendezvous
from para_attn_server.workers.group import GroupState

SERVER = [PluginDist("tiny", "para-attn-server", "0.1.0"), PluginDist("extra", "extra-dist", "2.0")]


def test_equal_plugins_have_no_differences() -> None:
    assert plugin_differences(SERVER, list(reversed(SERVER))) == []


def test_plugin_differences_name_what_is_missing_extra_or_another_version() -> None:
    here = [PluginDist("tiny", "para-attn-server", "0.2.0"), PluginDist("mine", None, None)]

    assert plugin_differences(SERVER, here) == [
        "plugin 'extra' (extra-dist 2.0) is loaded by the server but not installed here",
        "plugin 'mine' (mine (no version)) is installed here but not loaded by the server",
        "plugin 'tiny': para-attn-server 0.1.0 on the server, para-attn-server 0.2.0 here",
    ]


@pytest.mark.parametrize(
    ("endpoint", "expected"),
    [
        ("10.0.0.5:29500", ("10.0.0.5", 29500)),
        ("head-node", ("head-node", 29400)),
        ("[::1]:1234", ("::1", 1234)),
        ("::1", ("::1", 29400)),
    ],
)
def test_rendezvous_endpoints_split_into_host_and_port(endpoint: str, expected: tuple[str, int]) -> None:
    assert split_endpoint(endpoint) == expected


@pytest.mark.parametrize("endpoint", ["host:port", "host:0", "host:70000"])
def test_a_bad_rendezvous_endpoint_says_so(endpoint: str) -> None:
    with pytest.raises(ValueError, match="is not HOST:PORT"):
        split_endpoint(endpoint)


def test_a_wildcard_address_means_where_the_host_reached_the_server() -> None:
    assert reachable("0.0.0.0", "http://head.example:5000") == "head.example"
    assert reachable("10.1.2.3", "http://head.example:5000") == "10.1.2.3"


def spec(generation: int = 3) -> RankSpec:
    rendezvous = Rendezvous(endpoint="10.0.0.5:29400", run_id="abcd", nnodes=2, join_timeout=60)
    return RankSpec(
        world_size=8, control_host="10.0.0.5", control_port=4000, token="t", generation=generation,
        rendezvous=rendezvous, join_token="secret", predictor="noop",
    )  # fmt: skip


def test_every_node_runs_the_same_agent_command_for_a_generation() -> None:
    command = agent_command(spec(), 4, local_addr="10.0.0.7")

    assert command[1:4] == ["-m", "para_attn_server.cluster.agent", "--rdzv-backend=c10d"]  # torchrun, bound
    assert "--local-addr=10.0.0.7" in command  # where this node's agent may listen
    assert "--rdzv-endpoint=10.0.0.5:29400" in command
    assert "--rdzv-id=abcd-0-3" in command  # one rendezvous per generation
    assert "--nnodes=2" in command
    assert "--rdzv-conf=is_host=0,join_timeout=60" in command  # the server hosts the store
    assert command[-4:] == ["--nproc-per-node=4", "--max-restarts=0", "--module", "para_attn_server.rank.worker"]


@dataclass
class StubGroup:
    """What ClusterHost reads of a WorkerGroup."""

    spec: RankSpec
    index: int = 0
    generation: int = 0
    state: GroupState = GroupState.STOPPED
    on_launch: Any = field(default=None)


@pytest.mark.anyio
async def test_the_join_route_long_polls_until_the_next_generation_is_launched() -> None:
    cluster = ClusterHost("127.0.0.1:29400", "secret", SERVER, 4)
    group = StubGroup(spec(0))
    cluster.attach(group)  # type: ignore[arg-type]
    first = await cluster.join_spec(after=0, wait=0)
    assert first.generation == 0  # nothing launched yet: the template

    waiting = asyncio.create_task(cluster.join_spec(after=0, wait=30))
    await asyncio.sleep(0)
    assert not waiting.done()
    group.generation, group.state = 1, GroupState.STARTING
    group.on_launch(msgspec.structs.replace(group.spec, generation=1, token="gen1"))
    answer = await waiting

    assert (answer.generation, answer.state, answer.spec.token, answer.nproc_per_node) == (1, "starting", "gen1", 4)
    assert answer.spec.join_token == ""  # never sent back
    assert answer.spec.rendezvous is not None
    assert answer.spec.rendezvous.endpoint == "127.0.0.1:29400"  # the gate, not the store behind it
    assert answer.plugins == SERVER


def test_a_predictor_object_cannot_travel_to_joined_hosts() -> None:
    cluster = ClusterHost("127.0.0.1:29400", "secret", [], 1)
    group = StubGroup(msgspec.structs.replace(spec(0), predictor=None, predictor_pickle=b"..."))

    with pytest.raises(ConfigurationError, match="a predictor object cannot be sent to them"):
        cluster.attach(group)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"num_devices": 3, "group_size": 2}, "--num-devices 3 is not a multiple of --group-size 2"),
        ({"num_devices": 2, "nnodes": 2}, "--executor multiprocessing starts ranks on this host only: --nnodes 2"),
        (
            {"num_devices": 2, "nnodes": 2, "executor": "torchrun", "group_size": 2},
            "--group-size 2: with --nnodes 2 one group spans the hosts, so it must be all 4 ranks",
        ),
        ({"num_devices": 2, "nnodes": 2, "executor": "torchrun", "group_size": 3}, "--num-devices 2 x --nnodes 2 is"),
        (
            {"num_devices": 1, "nnodes": 2, "executor": "torchrun", "rdzv_endpoint": "head:port"},
            "--rdzv-endpoint: 'head:port' is not HOST:PORT",
        ),
    ],
)
def test_the_server_refuses_layouts_it_cannot_run(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Any, settings: dict[str, Any], message: str
) -> None:
    monkeypatch.delenv(AUTOLOAD_ENV, raising=False)
    server = ParaAttentionServer("noop", port=0, output_dir=str(tmp_path), **settings)

    with pytest.raises(ConfigurationError, match=re.escape(message)):
        asyncio.run(server.serve())


def test_the_server_says_when_it_cannot_listen_at_the_rendezvous_endpoint(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    monkeypatch.delenv(AUTOLOAD_ENV, raising=False)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        endpoint = f"127.0.0.1:{taken.getsockname()[1]}"
        server = ParaAttentionServer(
            "noop", port=0, output_dir=str(tmp_path), num_devices=1, nnodes=2, executor="torchrun",
            rdzv_endpoint=endpoint,
        )  # fmt: skip

        message = f"--rdzv-endpoint {endpoint}: cannot listen: Address already in use"
        with pytest.raises(ConfigurationError, match=message):
            asyncio.run(server.serve())


def test_join_without_a_token_is_a_usage_error_that_says_where_to_find_it(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv(JOIN_TOKEN_ENV, raising=False)

    with pytest.raises(SystemExit) as info:
        cli.main(["join", "http://head:5000", "--num-devices", "1"])

    assert info.value.code == 2
    expected = "--token-file (or $PARA_ATTN_SERVER_JOIN_TOKEN, or --token) is required: the server logs where"
    assert expected in capsys.readouterr().err
