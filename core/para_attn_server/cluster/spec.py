"""A group across hosts: what the server and ``para-attn-server join`` agree on.

The server's host runs the group's first node and hosts torch.distributed elastic's c10d
rendezvous store; every other host runs ``para-attn-server join URL``, which fetches a
``JoinSpec`` from ``GET JOIN_ROUTE`` (a call signed with the join token's proof: ``auth``)
and runs torchrun's elastic agent for its node with the spec's ``RankSpec``, meeting the
others through its own ``tunnel.StoreForwarder``. Both sides start the agent with the same
command (``agent_command``), so the rendezvous, the rank layout (node-major: global rank =
node rank x ranks per node + local rank) and the rank processes are the same on every host.
What a host is sent never holds a pickle: the predictor travels by its name or module:Class.

How a joined host follows restarts: each control listener keeps its port for the server's
life, but every generation has a token of its own (a rank of an earlier generation is never
let back in), and torchrun's agent exits when its ranks do. So ``join`` asks the route for
the group's current generation (a long poll, ``?after=G&wait=S``: answered as soon as a
generation after G is launched) and starts an agent for each generation it is told of,
stopping the previous one. The server needs to know nothing about the joined hosts beyond
what their ranks say when they connect.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import msgspec

from para_attn_server.workers.executor import RankSpec

if TYPE_CHECKING:
    from para_attn_server.plugin.manager import Plugins

JOIN_ROUTE = "/v1/cluster/join"
AGENT_MODULE = "para_attn_server.cluster.agent"  # torchrun's agent, listening where told
DEFAULT_RDZV_PORT = 29400
# An address the server listens on "everywhere": a joined host reaches it at the address it
# reached the server's HTTP at.
WILDCARDS = frozenset({"", "0.0.0.0", "::", "[::]"})


class JoinRefusedError(Exception):
    """This host cannot join: the message says why (``join`` exits with code 2)."""


class PluginDist(msgspec.Struct, frozen=True):
    """One loaded plugin and the distribution (package) and version it came from."""

    name: str
    distribution: str | None
    version: str | None


class JoinSpec(msgspec.Struct, kw_only=True, frozen=True):
    """What a joining host needs to start its node of the group."""

    server_version: str
    group: int
    state: str  # the group's: starting, ready, busy, faulted, stopped
    generation: int  # 0 until the group launched its first generation
    nproc_per_node: int  # ranks every node starts
    spec: RankSpec  # the current generation's (without the join token's proof: the host makes it)
    plugins: list[PluginDist]  # the server's, to compare with the host's own


def installed_plugins(plugins: Plugins) -> list[PluginDist]:
    return [PluginDist(row["name"], row["distribution"], row["version"]) for row in plugins.describe()]


def plugin_differences(server: list[PluginDist], here: list[PluginDist]) -> list[str]:
    """How this host's plugins differ from the server's, one line each; empty when equal."""

    def label(plugin: PluginDist) -> str:
        return f"{plugin.distribution or plugin.name} {plugin.version or '(no version)'}"

    theirs, ours = {p.name: p for p in server}, {p.name: p for p in here}
    lines = []
    for name in sorted(theirs.keys() | ours.keys()):
        remote, local = theirs.get(name), ours.get(name)
        if local is None:
            lines.append(f"plugin {name!r} ({label(theirs[name])}) is loaded by the server but not installed here")
        elif remote is None:
            lines.append(f"plugin {name!r} ({label(local)}) is installed here but not loaded by the server")
        elif (remote.distribution, remote.version) != (local.distribution, local.version):
            lines.append(f"plugin {name!r}: {label(remote)} on the server, {label(local)} here")
    return lines


def split_endpoint(endpoint: str, default_port: int = DEFAULT_RDZV_PORT) -> tuple[str, int]:
    """``HOST[:PORT]`` (IPv6 in brackets) as (host, port)."""
    host, sep, port = endpoint.rpartition(":")
    if not sep or (host.count(":") and not host.endswith("]")):  # no port, or a bare IPv6 address
        host, port = endpoint, str(default_port)
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{endpoint!r} is not HOST:PORT")
    return host.strip("[]"), int(port)


def join_endpoint(host: str, port: int) -> str:
    """``HOST:PORT``, an IPv6 host in brackets: the inverse of ``split_endpoint``."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def reachable(host: str, server_url: str) -> str:
    """The address a joined host uses for ``host``, an address the server gave: a wildcard
    means wherever this host reached the server."""
    return (urlsplit(server_url).hostname or "127.0.0.1") if host in WILDCARDS else host


def agent_command(
    spec: RankSpec, nproc_per_node: int, rendezvous: list[str] | None = None, local_addr: str | None = None
) -> list[str]:
    """torchrun's elastic agent for one node of ``spec``'s group. ``rendezvous`` overrides
    the spec's (a group on one host); ``local_addr``: this node's address, where the store
    the agent may host for the ranks listens (``agent``)."""
    if rendezvous is None:
        r = spec.rendezvous
        assert r is not None, "a group that spans hosts has a rendezvous"
        # The server hosts the store: no agent may try to (is_host=0). One rendezvous per
        # generation, so an agent of an earlier generation can never complete a later one.
        rendezvous = [
            "--rdzv-backend=c10d", f"--rdzv-endpoint={r.endpoint}",
            f"--rdzv-id={r.run_id}-{spec.group}-{spec.generation}", f"--nnodes={r.nnodes}",
            f"--rdzv-conf=is_host=0,join_timeout={r.join_timeout}",
        ]  # fmt: skip
    local = [f"--local-addr={local_addr}"] if local_addr and local_addr not in WILDCARDS else []
    return [
        sys.executable, "-m", AGENT_MODULE, *rendezvous, *local,
        f"--nproc-per-node={nproc_per_node}", "--max-restarts=0", "--module", "para_attn_server.rank.worker",
    ]  # fmt: skip


def network_spec(spec: RankSpec) -> RankSpec:
    """What a joined host may take from the network: ``JoinRefusedError`` for a pickle."""
    if spec.predictor_pickle is not None or spec.predictor is None:
        raise JoinRefusedError("the server sent a pickled predictor: this host takes the predictor by name only")
    return spec


# ---- hosts that bring their own groups (the fleet) -----------------------------------------

HOSTS_ROUTE = "/v1/cluster/hosts"


class HostOffer(msgspec.Struct, kw_only=True, frozen=True):
    """What ``join --group-size`` offers when it registers its host."""

    name: str
    server_version: str  # the join's own para-attn-server version
    plugins: list[PluginDist]
    num_devices: int
    group_size: int | None  # None: the server's --group-size, or all the host's devices in one group
    device: str  # "cuda" or "cpu"


class GroupOrder(msgspec.Struct, kw_only=True, frozen=True):
    """One of a host's groups as the server wants it: running ``spec`` (its generation), or
    stopped (``spec`` None)."""

    group: int  # the server's index of the group
    local: int  # its place on the host: devices local x size .. local x size + size - 1
    spec: RankSpec | None  # without the join token's proof: the host makes it


class HostOrders(msgspec.Struct, kw_only=True, frozen=True):
    """The whole of what the server wants of a host; the host makes it so (a long poll
    answers it whenever it changes, ``seq`` counting the changes)."""

    seq: int
    state: str  # serving, draining, left, lost, refused
    reason: str | None = None  # why it left, was lost or refused
    groups: list[GroupOrder] = []
    executor: str = "multiprocessing"  # what starts the ranks there, as on the server
    executor_options: dict[str, str] = {}
    host_timeout: float = 15.0  # seconds without a poll after which the server counts the host lost


class HostAccepted(msgspec.Struct, kw_only=True, frozen=True):
    host_id: str  # the path of its orders and reports
    orders: HostOrders


class HostEvent(msgspec.Struct, kw_only=True, frozen=True):
    """What a host reports of one group's ranks: ``started`` (a generation's processes are
    up: ``pids``), ``exited`` (one of them ended: ``detail`` says how) or ``stopped`` (none left)."""

    group: int
    generation: int
    kind: str
    detail: str = ""
    pids: dict[int, int] = {}
