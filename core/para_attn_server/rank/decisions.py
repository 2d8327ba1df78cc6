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
the host cannot take a rank's place. Each decision carries the job's number: a rank that left a job
early (it failed while rank 0 went on) skips the decisions of that job left in its socket
instead of reading them as the next job's.
"""

from __future__ import annotations

import hashlib
import hmac
import socket
import struct
from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist

from para_attn_server.protocol import recv_exactly

HOST = "127.0.0.1"
HELLO = struct.Struct(">i32s")  # rank, SHA-256 of the generation's token (any length fits)
DECISION = struct.Struct(">IB")  # job number, stop


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
            with socket.create_server((HOST, 0), backlog=world_size) as server:
                server.settimeout(timeout)
                share_port(server.getsockname()[1])
                self.peers = _accept(server, world_size, proof)
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


def _accept(server: socket.socket, world_size: int, proof: bytes) -> list[socket.socket]:
    """One authenticated connection from each rank 1..world_size-1, in rank order."""
    by_rank: dict[int, socket.socket] = {}
    while len(by_rank) < world_size - 1:
        peer, _ = server.accept()  # times out with the server socket: a rank that never comes
        peer.settimeout(server.gettimeout())  # and so does one that connects and says nothing
        hello = _read_hello(peer)
        if hello is None or not (1 <= hello[0] < world_size) or hello[0] in by_rank:
            peer.close()
            continue
        if not hmac.compare_digest(hello[1], proof):
            peer.close()
            continue
        peer.settimeout(None)
        by_rank[hello[0]] = peer
    return [by_rank[rank] for rank in sorted(by_rank)]


def _read_hello(peer: socket.socket) -> tuple[int, bytes] | None:
    try:
        rank, proof = HELLO.unpack(_read_exactly(peer, HELLO.size))
    except (ConnectionError, TimeoutError):
        return None
    return int(rank), bytes(proof)


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
