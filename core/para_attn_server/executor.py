"""Executors: how a worker group's rank processes are started, watched and stopped.

An executor only manages processes. Everything else (the control connections, setup,
jobs, heartbeats, restarts) lives in ``group.WorkerGroup`` and is the same for every
executor. Executors are plugins (``register_executors``); the first-party ones are
``multiprocessing`` (one host) and ``torchrun`` (one or more hosts).
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import msgspec


class RankSpec(msgspec.Struct, kw_only=True, frozen=True):
    """Everything a rank process needs to join a group; the same for every rank."""

    world_size: int
    control_host: str
    control_port: int
    token: str
    generation: int
    predictor: str | None = None  # entry-point name or "module:Class"
    predictor_pickle: bytes | None = None  # an instance handed to ParaAttentionServer
    plugins: list[str] = []  # plugin modules to register (the server's own set)
    backend: str | None = None  # None: nccl with CUDA, gloo otherwise
    master_addr: str | None = None  # None: taken from the environment (torchrun)
    master_port: int | None = None
    heartbeat_interval: float = 1.0
    keepalive_interval: float = 30.0
    collective_timeout: float = 1800.0
    options: dict[str, str] = {}
    max_output_bytes: int = 1 << 30
    log_level: str = "INFO"


class Executor(ABC):
    """Starts the ranks of one worker group and reports when any of them exits."""

    def __init__(self, num_ranks: int, options: dict[str, str]) -> None:
        self.num_ranks = num_ranks
        self.options = options

    @abstractmethod
    async def launch(self, spec: RankSpec) -> None:
        """Start every rank process this executor owns; return once they are started."""

    @abstractmethod
    async def wait_exit(self) -> str:
        """Return, with a description such as ``rank 1 (pid 42) killed by SIGKILL``, as soon
        as any rank process exits. Cancelled when the group stops watching."""

    @abstractmethod
    async def wait_stopped(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for every rank process to exit by itself."""

    @abstractmethod
    async def terminate(self, grace: float) -> None:
        """Stop every rank process: SIGTERM, then SIGKILL after ``grace`` seconds."""

    def pids(self) -> dict[int, int]:
        """Rank -> pid of the processes this executor started (for status pages)."""
        return {}
