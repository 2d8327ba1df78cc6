"""Rank 0's continue/stop decision at each step boundary, to every other rank.

Every rank must stop at the same step, so at each boundary the other ranks wait for rank
0's decision. On one host it travels over a direct loopback connection per rank, 5 bytes per
step, where a one-element gloo broadcast spends far longer in thread hand-offs inside
ProcessGroupGloo than the 1% of a tiny-Flux CPU step that the step hook may take
(``python -m benchmarks --only progress``; benchmarks/README.md). Ranks on several
hosts use the gloo broadcast, as rank 0's address is not known to them (and steps of a
model that needs several hosts are long).

Rank 0 listens on loopback and gives its port to the others with one broadcast at setup;
each connects and presents its rank and a hash of the generation's token, so a stranger on
the host cannot take a rank's place. Rank 0 reads every connection as its bytes come, so a
stranger that connects and says nothing delays no rank (read one at a time, it held a setup
for the whole ``--collective-timeout``); it is dropped after ``HELLO_WAIT`` seconds, and
past ``MAX_PENDING`` waiting the oldest goes, as on the server's control port. Each
decision carries the job's number: a rank that left a job early (it failed while rank 0
went on) skips the decisions of that job left in its socket instead of reading them as the
next job's.
"""

from __future__ import annotations

import hashlib
import hmac
import selectors
import socket
import struct
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist

from para_attn_server.protocol import recv_exactly

HOST = "127.0.0.1"
HELLO = struct.Struct(">i32s")  # rank, SHA-256 of the generation's token (any length fits)
DECISION = struct.Struct(">IB")  # job number, stop
HELLO_WAIT = 3.0  # a rank sends its hello as it connects: a connection silent this long is a stranger's
HELLO_GRACE = 1.0  # a connection younger than this is never evicted
MAX_PENDING = 16  # connections waiting for their hello past which the oldest are evicted
MAX_WAITING = 64  # past this, with none old enough to evict, new connections are closed


class DecisionChannel:
    """A group of one rank: its own decision is the group's."""

    def __init__(self) -> None:
        self.job = 0

    def begin_job(self) -> None:
        """Called by every rank as each job starts (all ranks run the same jobs in order)."""
        self.job = (self.job + 1) % 2**32

    def decide(self, stop: bool) -> bool:
        """Rank 0: send ``stop`` to every rank and return it. Others: return rank 0's."""
        return stop

    def close(self) -> None:
        pass


class BroadcastDecisions(DecisionChannel):
    """The decision as a one-element broadcast over a gloo group (ranks on several hosts)."""

    def __init__(self, group: Any) -> None:
        super().__init__()
        self.group = group
        self.flag = torch.zeros(1, dtype=torch.int32)

    def decide(self, stop: bool) -> bool:
        self.flag[0] = int(stop)
        dist.broadcast(self.flag, src=0, group=self.group)
        return bool(self.flag.item())


class SocketDecisions(DecisionChannel):
    """The decision as a 5-byte frame on a loopback connection from rank 0 to each rank (one host)."""

    def __init__(
        self, rank: int, world_size: int, token: str, share_port: Callable[[int], int], timeout: float
    ) -> None:
        """``share_port(port)`` gives rank 0's listening port to every rank (rank 0 passes
        its port, the others 0, and all get rank 0's back)."""
        super().__init__()
        self.rank = rank
        self.peers: list[socket.socket] = []
        proof = hashlib.sha256(token.encode()).digest()
        if rank == 0:
            with socket.create_server((HOST, 0), backlog=world_size + MAX_WAITING) as server:
                share_port(server.getsockname()[1])
                with _Door(server, world_size, proof) as door:
                    self.peers = door.ranks_within(timeout)
        else:
            peer = socket.create_connection((HOST, share_port(0)), timeout=timeout)
            peer.sendall(HELLO.pack(rank, proof))
            # Waiting longer than a collective may is a fault, as in the gloo broadcast.
            self.peers = [peer]
        for peer in self.peers:
            peer.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def decide(self, stop: bool) -> bool:
        if self.rank == 0:
            frame = DECISION.pack(self.job, stop)
            for peer in self.peers:
                peer.sendall(frame)
            return stop
        while True:
            job, got = DECISION.unpack(_read_exactly(self.peers[0], DECISION.size))
            if job == self.job:
                return bool(got)

    def close(self) -> None:
        for peer in self.peers:
            peer.close()


class _Door:
    """Rank 0's listening socket during setup: every connection is read as its bytes come, so
    one that says nothing delays no rank."""

    def __init__(self, server: socket.socket, world_size: int, proof: bytes) -> None:
        self.server = server
        self.world_size = world_size
        self.proof = proof
        self.ranks: dict[int, socket.socket] = {}
        self.waiting: dict[socket.socket, tuple[float, bytearray]] = {}  # oldest first
        self.selector = selectors.DefaultSelector()
        server.setblocking(False)
        self.selector.register(server, selectors.EVENT_READ)

    def ranks_within(self, timeout: float) -> list[socket.socket]:
        """One authenticated connection from each rank 1..world_size-1, in rank order;
        ``TimeoutError`` when they have not all come within ``timeout``."""
        deadline = time.monotonic() + timeout
        while len(self.ranks) < self.world_size - 1:
            now = time.monotonic()
            if now >= deadline:
                raise TimeoutError(f"ranks {self._missing()} did not connect within {timeout:g} s")
            for peer, (came, _) in list(self.waiting.items()):
                if now - came >= HELLO_WAIT:
                    self._drop(peer)  # a stranger that says nothing
            wake = min([deadline, *(came + HELLO_WAIT for came, _ in self.waiting.values())])
            for key, _ in self.selector.select(max(0.0, wake - now)):
                if key.fileobj is self.server:
                    self._admit()
                elif isinstance(key.fileobj, socket.socket) and key.fileobj in self.waiting:  # not evicted just now
                    self._read(key.fileobj)
        return [self.ranks[rank] for rank in sorted(self.ranks)]

    def _missing(self) -> list[int]:
        return [rank for rank in range(1, self.world_size) if rank not in self.ranks]

    def _admit(self) -> None:
        while True:
            try:
                peer, _ = self.server.accept()
            except (BlockingIOError, InterruptedError):
                return
            if not self._make_room():
                peer.close()
                continue
            peer.setblocking(False)
            self.selector.register(peer, selectors.EVENT_READ)
            self.waiting[peer] = (time.monotonic(), bytearray())

    def _make_room(self) -> bool:
        evict_before = time.monotonic() - HELLO_GRACE
        while len(self.waiting) >= MAX_PENDING:
            oldest, (came, _) = next(iter(self.waiting.items()))
            if came > evict_before:
                return len(self.waiting) < MAX_WAITING
            self._drop(oldest)
        return True

    def _read(self, peer: socket.socket) -> None:
        got = self.waiting[peer][1]
        try:
            data = peer.recv(HELLO.size - len(got))
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self._drop(peer)
            return
        got += data
        if len(got) < HELLO.size:
            return
        self.selector.unregister(peer)
        del self.waiting[peer]
        rank, proof = HELLO.unpack(got)
        if not 1 <= rank < self.world_size or rank in self.ranks or not hmac.compare_digest(proof, self.proof):
            peer.close()
            return
        peer.setblocking(True)
        self.ranks[rank] = peer

    def _drop(self, peer: socket.socket) -> None:
        self.selector.unregister(peer)
        del self.waiting[peer]
        peer.close()

    def __enter__(self) -> _Door:
        return self

    def __exit__(self, *exc: object) -> None:
        for peer in list(self.waiting):
            self._drop(peer)
        self.selector.close()
        if len(self.ranks) < self.world_size - 1:
            for peer in self.ranks.values():
                peer.close()


def _read_exactly(peer: socket.socket, size: int) -> bytes:
    data = recv_exactly(peer, size)
    if data is None:
        raise ConnectionError("rank 0 closed its decision connection")
    return data


def open_channel(rank: int, world_size: int, token: str, group: Any, timeout: float) -> DecisionChannel:
    """The decision channel of a group: sockets on one host, a gloo broadcast across hosts.
    A collective call on every rank of ``group``."""
    if world_size == 1:
        return DecisionChannel()
    hosts: list[Any] = [None] * world_size
    dist.all_gather_object(hosts, socket.gethostname(), group=group)
    if len(set(hosts)) == 1:

        def share_port(port: int) -> int:
            shared = torch.tensor([port], dtype=torch.int64)
            dist.broadcast(shared, src=0, group=group)
            return int(shared.item())

        return SocketDecisions(rank, world_size, token, share_port, timeout)
    return BroadcastDecisions(group)
