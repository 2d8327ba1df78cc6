"""The ``multiprocessing`` executor: every rank a spawned process on this host.

Each launch picks a free TCP port for torch.distributed's rendezvous (so a restart never
waits for the previous group's port), and watches the processes' sentinels so a rank that
dies is noticed at once, not at the next heartbeat.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import multiprocessing.connection
import signal
import socket
from collections.abc import Callable
from multiprocessing.process import BaseProcess

import msgspec

from para_attn_server import hookimpl
from para_attn_server.executor import Executor, RankSpec
from para_attn_server.rank import main as rank_main


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


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
        self._context = multiprocessing.get_context("spawn")
        self._processes: list[BaseProcess] = []

    async def launch(self, spec: RankSpec) -> None:
        spec = msgspec.structs.replace(spec, master_addr="127.0.0.1", master_port=free_port())
        self._processes = [
            self._context.Process(target=rank_main, args=(spec, rank, rank), name=f"para-attn-rank-{rank}")
            for rank in range(self.num_ranks)
        ]
        # Spawning pickles the spec and forks a helper: keep it off the event loop.
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

    def pids(self) -> dict[int, int]:
        return {rank: p.pid for rank, p in enumerate(self._processes) if p.pid is not None}


@hookimpl
def register_executors(register: Callable[[str, type[Executor]], None]) -> None:
    register("multiprocessing", MultiprocessingExecutor)
