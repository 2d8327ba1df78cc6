"""The server's side of a group that spans hosts (``--nnodes`` > 1).

``ClusterHost`` hosts the c10d rendezvous store that every node's elastic agent meets at,
holds the join token, and answers joining hosts with the group's current generation
(``JoinSpec``; see ``cluster.py`` for how a joined host follows restarts).

The store lives in the server process, not in an agent: it outlives each generation (the
server's own agent is restarted with its group), and it listens only where the operator
said (``--rdzv-endpoint``): a store that torch starts itself listens on every interface.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import socket
from typing import TYPE_CHECKING, Any

import msgspec

from para_attn_server.cluster.spec import JoinSpec, PluginDist, split_endpoint
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
        self._sock: socket.socket | None = None
        self._store: Any = None

    def open(self) -> None:
        """Listen at the rendezvous endpoint; a ``ConfigurationError`` if it cannot."""
        try:
            host, port = split_endpoint(self.endpoint)
        except ValueError as exc:
            raise ConfigurationError(f"--rdzv-endpoint: {exc}") from None
        try:
            sock = listening_socket(host, port, 512)
        except OSError as exc:
            raise ConfigurationError(f"--rdzv-endpoint {self.endpoint}: cannot listen: {exc.strerror}") from None
        self._store = hosted_store(sock, timeout=60)
        self._sock = sock
        log.info("c10d rendezvous for joining hosts at %s", self.endpoint)

    def close(self) -> None:
        self._store = None
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.close()
            self._sock = None

    def attach(self, group: WorkerGroup) -> None:
        """Serve ``group``'s generations to joining hosts."""
        self._group = group
        group.on_launch = self._launched_generation

    def _launched_generation(self, spec: RankSpec) -> None:
        self._launched = spec
        self._launch.set()
        self._launch = asyncio.Event()

    def authorized(self, token: str | None) -> bool:
        return token is not None and secrets.compare_digest(token.encode(), self.join_token.encode())

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
        return JoinSpec(
            server_version=version(),
            group=group.index,
            state=group.state.value,
            generation=spec.generation,
            nproc_per_node=self.nproc_per_node,
            spec=msgspec.structs.replace(spec, join_token=""),
            plugins=self.plugins,
        )
