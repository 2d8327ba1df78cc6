"""The ``multiprocessing`` executor: every rank a process on this host, forked from a fork server.

Each launch hosts torch.distributed's rendezvous store itself, in the server process, on a
fresh loopback port (a restart never waits for the previous group's port): torch's own
store, hosted by rank 0, would listen on every interface with no authentication. The ranks
connect to it as clients (``RankSpec.external_store``), and gloo is kept on the loopback
interface. The processes' sentinels are watched so a rank that dies is noticed at once, not
at the next heartbeat.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import multiprocessing.connection
import os
import signal
import socket
from collections.abc import Callable
from multiprocessing.process import BaseProcess
from typing import Any

import msgspec

from para_attn_server.plugin import Executor, RankSpec, hookimpl, hosted_store, listening_socket

STORE_HOST = "127.0.0.1"


def _rank_main(spec: RankSpec, rank: int, local_rank: int, launcher: int) -> None:
    """A rank's process. The rank module (torch) is imported here, never at the top: the
    fork server preloads it, and the server process itself has no use for torch.

    It dies with ``launcher``, the process that asked for it (the server, or a ``join``):
    its parent is the fork server, which outlives both. So a ``join`` killed by SIGKILL
    takes its ranks along instead of leaving them in the server's group."""
    from para_attn_server.plugin import die_with, rank_main

    die_with(launcher)
    rank_main(spec, rank, local_rank)


def loopback_store() -> tuple[socket.socket, Any]:
    """A TCPStore server on a fresh loopback port only."""
    sock = listening_socket(STORE_HOST, 0, 128)
    return sock, hosted_store(sock)


def describe_exit(rank: int, process: BaseProcess) -> str:
    code = process.exitcode
    if code is not None and code < 0:
        try:
            how = f"killed by {signal.Signals(-code).name}"
        except ValueError:
            how = f"killed by signal {-code}"
    else:
        how = f"exited with code {code}"
    return f"rank {rank} (pid {process.pid}) {how}"


def _start_all(processes: list[BaseProcess]) -> None:
    for process in processes:
        process.start()


def _join_all(processes: list[BaseProcess]) -> None:
    for process in processes:
        process.join()


class MultiprocessingExecutor(Executor):
    def __init__(self, num_ranks: int, options: msgspec.Struct) -> None:
        super().__init__(num_ranks, options)
        # Ranks fork from a fork server that has already imported the rank module with
        # torch, the HTTP package that plugins import, and (as spawn would) the main script,
        # so a predictor instance defined there unpickles. Each start and each restart then
        # skips seconds of imports per rank. The fork server holds no threads, CUDA or
        # sockets of ours: forking it is safe.
        self._context = multiprocessing.get_context("forkserver")
        self._context.set_forkserver_preload(["__main__", "para_attn_server.rank.worker", "para_attn_server.http"])
        self._processes: list[BaseProcess] = []
        self._store: tuple[socket.socket, Any] | None = None

    async def launch(self, spec: RankSpec) -> None:
        self._store = loopback_store()
        port = self._store[0].getsockname()[1]
        spec = msgspec.structs.replace(spec, master_addr=STORE_HOST, master_port=port, external_store=True)
        self._processes = [
            self._context.Process(
                target=_rank_main, args=(spec, rank, rank, os.getpid()), name=f"para-attn-rank-{rank}"
            )
            for rank in range(self.num_ranks)
        ]
        # Starting pickles the spec and waits for the fork server: keep it off the event loop.
        await asyncio.to_thread(_start_all, self._processes)

    async def wait_exit(self) -> str:
        processes = list(self._processes)
        sentinels = {p.sentinel: (rank, p) for rank, p in enumerate(processes)}
        loop = asyncio.get_running_loop()
        exited: asyncio.Future[int] = loop.create_future()

        def on_ready(fd: int) -> None:
            if not exited.done():
                exited.set_result(fd)

        for fd in sentinels:
            loop.add_reader(fd, on_ready, fd)
        try:
            fd = await exited
        finally:
            for fd_ in sentinels:
                loop.remove_reader(fd_)
        rank, process = sentinels[fd]
        process.join(timeout=1)
        return describe_exit(rank, process)

    async def wait_stopped(self, timeout: float) -> bool:
        processes = list(self._processes)

        def join() -> bool:
            multiprocessing.connection.wait([p.sentinel for p in processes if p.exitcode is None], timeout)
            return all(not p.is_alive() for p in processes)

        return await asyncio.to_thread(join)

    async def terminate(self, grace: float) -> None:
        processes = [p for p in self._processes if p.is_alive()]
        for p in processes:
            p.terminate()
        if processes and not await self.wait_stopped(grace):
            for p in processes:
                if p.is_alive():
                    p.kill()
        await asyncio.to_thread(_join_all, processes)
        for p in self._processes:
            p.close()
        self._processes = []
        if self._store is not None:
            sock, _ = self._store
            self._store = None  # the store's server stops with the object
            sock.close()

    def pids(self) -> dict[int, int]:
        return {rank: p.pid for rank, p in enumerate(self._processes) if p.pid is not None}


@hookimpl
def register_executors(register: Callable[[str, type[Executor]], None]) -> None:
    register("multiprocessing", MultiprocessingExecutor)
