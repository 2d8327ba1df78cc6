"""Executors: how a worker group's rank processes are started, watched and stopped.

An executor only manages processes. Everything else (the control connections, setup,
jobs, heartbeats, restarts) lives in ``group.WorkerGroup`` and is the same for every
executor. Executors are plugins (``register_executors``); the first-party ones are
``multiprocessing`` (one host) and ``torchrun`` (one or more hosts).
"""

from __future__ import annotations

import os
import select
import signal
import socket
import sys
import threading
from abc import ABC, abstractmethod
from datetime import timedelta
from typing import Any, ClassVar

import msgspec

from para_attn_server.errors import ConfigurationError
from para_attn_server.logs import current_format
from para_attn_server.settings import RankSettings, describe_error

#: The environment variable that carries a rank's spec (JSON) to processes that an executor
#: does not start itself (torchrun's agent, ``python -m para_attn_server.rank.worker``).
RANK_SPEC_ENV = "PARA_ATTN_SERVER_RANK_SPEC"


class Rendezvous(msgspec.Struct, kw_only=True, frozen=True):
    """torch.distributed elastic's c10d rendezvous of a group that spans ``nnodes`` hosts."""

    endpoint: str  # HOST:PORT of the store the server hosts
    run_id: str  # this server's; each generation rendezvous as ``{run_id}-{group}-{generation}``
    nnodes: int
    join_timeout: int = 600  # seconds an agent waits for the other nodes


class RankSpec(msgspec.Struct, kw_only=True, frozen=True):
    """Everything a rank process needs to join its group; the same for every rank of it."""

    world_size: int
    group: int = 0  # which worker group (its ranks are numbered from 0 within the group)
    device_offset: int = 0  # the group's first CUDA device on each host
    devices: list[int] | None = None  # or the CUDA device of each local rank (a model's ``devices``)
    model_name: str = ""  # the served model its group runs (a server with several)
    control_host: str
    control_port: int
    token: str
    generation: int
    predictor: str | None = None  # entry-point name or "module:Class"
    predictor_pickle: bytes | None = None  # an instance handed to ParaAttentionServer
    plugins: list[str] = []  # plugin modules to register (the server's own set)
    options: dict[str, str] = {}  # the predictor's --option values
    master_addr: str | None = None  # None: taken from the environment (torchrun)
    master_port: int | None = None
    external_store: bool = False  # the executor hosts the rendezvous store: every rank is its client
    rendezvous: Rendezvous | None = None  # set when the group spans several hosts (torchrun)
    node: str = ""  # the name of the joined host these ranks run on; "" on the server's own host
    join_token: str = ""  # required in the hello of every rank of a group that spans hosts
    settings: RankSettings = msgspec.field(default_factory=RankSettings)
    log_level: str = "INFO"
    # The format of the process that starts the ranks, unless it says otherwise.
    log_format: str = msgspec.field(default_factory=current_format)

    def to_env(self) -> str:
        return msgspec.json.encode(self).decode()

    @classmethod
    def from_env(cls, text: str) -> RankSpec:
        return msgspec.json.decode(text, type=cls)


def die_with_parent(sig: signal.Signals) -> None:
    """Have the kernel send ``sig`` to this process when its parent exits (Linux only; a
    no-op elsewhere). Safe as a ``preexec_fn``."""
    if sys.platform == "linux":
        import ctypes

        pr_set_pdeathsig = 1
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, int(sig))


def die_with(pid: int) -> None:
    """SIGKILL this process as soon as process ``pid`` exits: for a process that must not
    outlive one that is not its parent (a rank forked by a fork server, which outlives the
    process that asked for the rank). Linux (pidfd) only; a no-op elsewhere."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        os.kill(os.getpid(), signal.SIGKILL)
        return
    except (AttributeError, OSError):
        return

    def watch() -> None:
        select.select([fd], [], [])  # readable once the process exited
        os.kill(os.getpid(), signal.SIGKILL)

    threading.Thread(target=watch, name=f"die-with-{pid}", daemon=True).start()


def listening_socket(host: str, port: int, backlog: int) -> socket.socket:
    """A socket listening on exactly ``host:port``; OSError if it cannot."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
        sock.listen(backlog)
    except OSError:
        sock.close()
        raise
    return sock


def hosted_store(sock: socket.socket, timeout: float = 300.0) -> Any:
    """A torch.distributed TCPStore server on ``sock``, a socket bound here: torch's own
    listener would take every interface, with no authentication. Keep ``sock`` open as long
    as the store."""
    from torch.distributed import TCPStore  # type: ignore[attr-defined]  # re-exported at run time only

    host, port = sock.getsockname()[:2]
    return TCPStore(
        host, port, None, True, timedelta(seconds=timeout), wait_for_workers=False, master_listen_fd=sock.fileno()
    )


class NoOptions(msgspec.Struct, forbid_unknown_fields=True):
    """An executor that takes no ``--executor-option``."""


class Executor(ABC):
    """Starts the ranks of one worker group and reports when any of them exits.

    ``Options`` is the Struct of the ``--executor-option KEY=VALUE`` values it accepts; an
    unknown or ill-typed one is a startup error naming it.
    """

    Options: ClassVar[type[msgspec.Struct]] = NoOptions
    #: Whether it can start this host's part of a group that spans hosts (``--nnodes`` > 1).
    multi_node: ClassVar[bool] = False

    def __init__(self, num_ranks: int, options: msgspec.Struct) -> None:
        self.num_ranks = num_ranks
        self.options = options

    @classmethod
    def parse_options(cls, values: dict[str, str]) -> msgspec.Struct:
        try:
            return msgspec.convert(values, cls.Options, strict=False)
        except msgspec.ValidationError as exc:
            raise ConfigurationError(f"--executor-option {describe_error(exc)}") from None

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
