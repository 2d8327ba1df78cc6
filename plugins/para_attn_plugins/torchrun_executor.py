"""The ``torchrun`` executor: ``torch.distributed.run`` starts the ranks on this host.

torchrun's elastic agent sets each rank's ``RANK``/``LOCAL_RANK``/``WORLD_SIZE`` and the
rendezvous, and (with ``--max-restarts=0``) stops every rank as soon as one fails, then
exits; the worker group sees that exit as the fault and starts a new generation. Ranks
get their ``RankSpec`` through the environment.

A group on this host meets at a c10d rendezvous store this executor hosts for each launch,
on loopback (or at ``--executor-option rdzv_endpoint=HOST:PORT``): with ``--standalone``
torchrun's agent would host it on every interface. The agent (``agent_command``) keeps the
store it hosts for the ranks, and the ranks' gloo sockets, at its ``--local-addr``: loopback
here, and the address the ranks connect back to (``--control-host``) for a group across hosts.

With ``--nnodes`` > 1 it starts the server host's node of a group that spans hosts: the
agent meets the joined hosts' agents (``para-attn-server join``) at the c10d rendezvous the
server hosts (``RankSpec.rendezvous``), with the same command they run (``cluster.spec``).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
from collections.abc import Callable
from typing import Any

import msgspec

from para_attn_server.plugin import (
    RANK_SPEC_ENV,
    Executor,
    RankSpec,
    agent_command,
    hookimpl,
    hosted_store,
    listening_socket,
)

LOOPBACK = "127.0.0.1"


class TorchrunOptions(msgspec.Struct, forbid_unknown_fields=True):
    # HOST:PORT where the rendezvous store of a group on this host listens; None: loopback, any port
    rdzv_endpoint: str | None = None


class TorchrunExecutor(Executor):
    Options = TorchrunOptions
    multi_node = True
    _process: asyncio.subprocess.Process | None = None
    _store: tuple[socket.socket, Any] | None = None

    async def launch(self, spec: RankSpec) -> None:
        # torchrun provides the rendezvous; the spec must not override it.
        spec = msgspec.structs.replace(spec, master_addr=None, master_port=None)
        rendezvous = None  # the group's own, across hosts (the server hosts its store)
        local = spec.control_host  # this node's address: where the others' ranks reach this one
        if spec.rendezvous is None:
            local, port = self._open_store()
            where = f"[{local}]:{port}" if ":" in local else f"{local}:{port}"
            rendezvous = [
                "--rdzv-backend=c10d", f"--rdzv-endpoint={where}", f"--rdzv-id={spec.group}-{spec.generation}",
                "--rdzv-conf=is_host=0",
            ]  # fmt: skip
        self._process = await asyncio.create_subprocess_exec(
            *agent_command(spec, self.num_ranks, rendezvous, local),
            env={**os.environ, RANK_SPEC_ENV: spec.to_env()},
            start_new_session=True,  # one process group: terminate() reaches every rank
        )

    def _open_store(self) -> tuple[str, int]:
        """This launch's rendezvous store, at ``rdzv_endpoint`` or on loopback: (host, port)."""
        assert isinstance(self.options, TorchrunOptions)
        host, port = LOOPBACK, 0
        if self.options.rdzv_endpoint:
            host, _, number = self.options.rdzv_endpoint.rpartition(":")
            host, port = host.strip("[]") or LOOPBACK, int(number)
        self._close_store()
        sock = listening_socket(host, port, 128)
        self._store = (sock, hosted_store(sock))
        return host, int(sock.getsockname()[1])

    def _close_store(self) -> None:
        if self._store is not None:
            sock, _ = self._store
            self._store = None  # the store's server stops with the object
            sock.close()

    async def wait_exit(self) -> str:
        assert self._process is not None
        code = await self._process.wait()
        how = f"killed by {signal.Signals(-code).name}" if code < 0 else f"exited with code {code}"
        return f"torchrun (pid {self._process.pid}) {how}: a rank failed or was stopped"

    async def wait_stopped(self, timeout: float) -> bool:
        if self._process is None:
            return True
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._process.wait(), timeout)
        return self._process.returncode is not None

    async def terminate(self, grace: float) -> None:
        process, self._process = self._process, None
        if process is None:
            self._close_store()
            return
        self._signal_group(process.pid, signal.SIGTERM)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(process.wait(), grace)
        # The ranks may outlive the agent: make sure the whole group is gone.
        self._signal_group(process.pid, signal.SIGKILL)
        await process.wait()
        self._close_store()

    @staticmethod
    def _signal_group(pgid: int, sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, sig)

    def pids(self) -> dict[int, int]:
        return {}


@hookimpl
def register_executors(register: Callable[[str, type[Executor]], None]) -> None:
    register("torchrun", TorchrunExecutor)
