"""The ``torchrun`` executor: ``torch.distributed.run`` starts the ranks on this host.

torchrun's elastic agent sets each rank's ``RANK``/``LOCAL_RANK``/``WORLD_SIZE`` and the
rendezvous, and (with ``--max-restarts=0``) stops every rank as soon as one fails, then
exits; the worker group sees that exit as the fault and starts a new generation. Ranks
get their ``RankSpec`` through the environment. Executor options
(``--executor-option KEY=VALUE``): ``rdzv_endpoint`` (default: standalone on this host).

With ``--nnodes`` > 1 it starts the server host's node of a group that spans hosts: the
agent meets the joined hosts' agents (``para-attn-server join``) at the c10d rendezvous the
server hosts (``RankSpec.rendezvous``), with the same command they run (``cluster.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import Callable

import msgspec

from para_attn_server.plugin import RANK_SPEC_ENV, Executor, RankSpec, agent_command, hookimpl


class TorchrunOptions(msgspec.Struct, forbid_unknown_fields=True):
    rdzv_endpoint: str | None = None  # HOST:PORT of a c10d rendezvous; None: standalone


class TorchrunExecutor(Executor):
    Options = TorchrunOptions
    multi_node = True
    _process: asyncio.subprocess.Process | None = None

    async def launch(self, spec: RankSpec) -> None:
        # torchrun provides the rendezvous; the spec must not override it.
        spec = msgspec.structs.replace(spec, master_addr=None, master_port=None)
        assert isinstance(self.options, TorchrunOptions)
        endpoint = self.options.rdzv_endpoint
        rendezvous = None  # the group's own, across hosts
        if spec.rendezvous is None:
            rendezvous = ["--standalone"] if not endpoint else ["--rdzv-backend=c10d", f"--rdzv-endpoint={endpoint}"]
        self._process = await asyncio.create_subprocess_exec(
            *agent_command(spec, self.num_ranks, rendezvous),
            env={**os.environ, RANK_SPEC_ENV: spec.to_env()},
            start_new_session=True,  # one process group: terminate() reaches every rank
        )

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
            return
        self._signal_group(process.pid, signal.SIGTERM)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(process.wait(), grace)
        # The ranks may outlive the agent: make sure the whole group is gone.
        self._signal_group(process.pid, signal.SIGKILL)
        await process.wait()

    @staticmethod
    def _signal_group(pgid: int, sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, sig)

    def pids(self) -> dict[int, int]:
        return {}


@hookimpl
def register_executors(register: Callable[[str, type[Executor]], None]) -> None:
    register("torchrun", TorchrunExecutor)
