"""The server's side of a group that spans hosts (``--nnodes`` > 1).

``ClusterHost`` hosts the c10d rendezvous store that every node's elastic agent meets at,
holds the join token, and answers joining hosts with the group's current generation
(``JoinSpec``; see ``spec.py`` for how a joined host follows restarts).

The store lives in the server process, not in an agent: it outlives each generation (the
server's own agent is restarted with its group). It listens on loopback, where the server's
own agent reaches it; at the address given (``--rdzv-endpoint``) a ``tunnel.StoreGate`` lets
through only the agents of hosts that prove the join token (torch's agents unpickle what
they read there). A store that torch starts itself listens on every interface, open to all.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import socket
from typing import TYPE_CHECKING, Any

import msgspec

from para_attn_server.cluster.auth import Sessions
from para_attn_server.cluster.spec import JOIN_ROUTE, JoinSpec, PluginDist, join_endpoint, split_endpoint
from para_attn_server.cluster.tunnel import StoreGate
from para_attn_server.errors import ConfigurationError
from para_attn_server.plugin.manager import version
from para_attn_server.workers.executor import RankSpec, hosted_store, listening_socket

if TYPE_CHECKING:
    from para_attn_server.workers.group import WorkerGroup

log = logging.getLogger("para_attn_server.cluster")


class ClusterHost:
    def __init__(self, endpoint: str, join_token: str, plugins: list[PluginDist], nproc_per_node: int) -> None:
        self.endpoint = endpoint
        self.join_token = join_token
        self.run_id = secrets.token_hex(4)  # this server's: a rendezvous of an earlier run never matches
        self.plugins = plugins
        self.nproc_per_node = nproc_per_node
        self._group: WorkerGroup | None = None
        self._launched: RankSpec | None = None
        self._launch = asyncio.Event()  # set at each launch; long polls wait on it
        self.sessions = Sessions(join_token, JOIN_ROUTE)
        self.local_endpoint = ""  # the store itself, on loopback: the server's own agent meets there
        self._sock: socket.socket | None = None
        self._gate: StoreGate | None = None
        self._store: Any = None

    def open(self) -> None:
        """Listen at the rendezvous endpoint; a ``ConfigurationError`` if it cannot."""
        try:
            host, port = split_endpoint(self.endpoint)
        except ValueError as exc:
            raise ConfigurationError(f"--rdzv-endpoint: {exc}") from None
        try:
            public = listening_socket(host, port, 512)
        except OSError as exc:
            raise ConfigurationError(f"--rdzv-endpoint {self.endpoint}: cannot listen: {exc.strerror}") from None
        sock = listening_socket("127.0.0.1", 0, 512)
        self._store = hosted_store(sock, timeout=60)
        self._sock = sock
        self.local_endpoint = join_endpoint(*sock.getsockname()[:2])
        self._gate = StoreGate(public, self.join_token, sock.getsockname()[:2])
        self._gate.start()
        log.info("c10d rendezvous for joining hosts at %s (they prove the join token first)", self.endpoint)

    def close(self) -> None:
        if self._gate is not None:
            self._gate.close()
            self._gate = None
        self._store = None
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.close()
            self._sock = None

    def attach(self, group: WorkerGroup) -> None:
        """Serve ``group``'s generations to joining hosts. Its own ranks meet at the store on
        loopback; a predictor object cannot travel to another host (``ConfigurationError``)."""
        if group.spec.predictor is None:
            raise ConfigurationError(
                "--nnodes > 1: the joined hosts run the predictor by its name or module:Class; a predictor "
                "object cannot be sent to them"
            )
        rendezvous = group.spec.rendezvous
        assert rendezvous is not None, "a group that spans hosts has a rendezvous"
        group.spec = msgspec.structs.replace(
            group.spec, rendezvous=msgspec.structs.replace(rendezvous, endpoint=self.local_endpoint)
        )
        self._group = group
        group.on_launch = self._launched_generation

    def _launched_generation(self, spec: RankSpec) -> None:
        self._launched = spec
        self._launch.set()
        self._launch = asyncio.Event()

    async def join_spec(self, after: int, wait: float) -> JoinSpec:
        """The group's current generation, once it is later than ``after`` or ``wait``
        seconds passed (then whatever is current)."""
        group = self._group
        assert group is not None, "no group attached"
        launched = self._launched.generation if self._launched else 0
        if launched <= after and wait > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._launch.wait(), wait)
        spec = self._launched or group.spec
        assert spec.rendezvous is not None
        # Where the joined hosts meet (the gate), without the token's proof (they have the token)
        # and never a pickle (the predictor travels by name).
        rendezvous = msgspec.structs.replace(spec.rendezvous, endpoint=self.endpoint)
        spec = msgspec.structs.replace(spec, join_token="", predictor_pickle=None, rendezvous=rendezvous)
        return JoinSpec(
            server_version=version(),
            group=group.index,
            state=group.state.value,
            generation=spec.generation,
            nproc_per_node=self.nproc_per_node,
            spec=spec,
            plugins=self.plugins,
        )
