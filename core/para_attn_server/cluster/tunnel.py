"""The rendezvous store's door: only peers that prove the join token reach it.

torch's elastic agents speak to the c10d store with no credential, and what they read there
they unpickle; so the store itself listens on loopback only and the address given
(``--rdzv-endpoint``) is a ``StoreGate``. Each connection first proves the token both ways:

    join -> server   MAGIC, join's nonce (32 bytes)
    server -> join   the server's nonce, HMAC(token, "store server", both nonces)
    join -> server   HMAC(token, "store join", both nonces)

and is then joined to the store, byte for byte. A stranger is read 72 bytes at most, for
``HANDSHAKE_SECONDS`` at most, and the oldest of more than ``MAX_PENDING`` waiting is dropped:
it cannot write to the store, hold memory or keep a node out. On a joined host a
``StoreForwarder`` (in ``join``) listens on loopback for the agent, proves the token to the
gate and checks the gate's proof before it passes a byte on: a fake store is never read.
"""

from __future__ import annotations

import collections
import contextlib
import hmac
import logging
import os
import socket
import threading
from collections.abc import Callable

from para_attn_server.cluster.auth import mac

log = logging.getLogger("para_attn_server.cluster")
MAGIC = b"PASRDZV1"
NONCE = 32
HANDSHAKE_SECONDS = 10.0
MAX_PENDING = 64
CHUNK = 65536


def _read_exactly(sock: socket.socket, size: int) -> bytes | None:
    data = b""
    while len(data) < size:
        try:
            more = sock.recv(size - len(data))
        except OSError:
            return None
        if not more:
            return None
        data += more
    return data


def _close(*socks: socket.socket) -> None:
    for sock in socks:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)
        sock.close()


def _pipe(a: socket.socket, b: socket.socket) -> None:
    """Both ways until either side closes; then both are closed."""

    def one_way(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(CHUNK):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            _close(a, b)

    for source, sink in ((a, b), (b, a)):
        threading.Thread(target=one_way, args=(source, sink), name="rdzv-pipe", daemon=True).start()


def _background(target: Callable[..., None], name: str, *args: object) -> None:
    threading.Thread(target=target, args=args, name=name, daemon=True).start()


class StoreGate:
    """Accepts at ``sock`` (bound at the address given) and joins peers that prove the token
    to the store at ``store`` (on loopback)."""

    def __init__(self, sock: socket.socket, token: str, store: tuple[str, int]) -> None:
        self.sock = sock
        self.token = token.encode()
        self.store = store
        self._pending: collections.deque[socket.socket] = collections.deque()
        self._lock = threading.Lock()
        self.refused = 0

    def start(self) -> None:
        _background(self._accept, "rdzv-gate")

    def close(self) -> None:
        _close(self.sock)

    def _accept(self) -> None:
        while True:
            try:
                peer, _ = self.sock.accept()
            except OSError:
                return  # closed
            with self._lock:
                self._pending.append(peer)
                evicted = self._pending.popleft() if len(self._pending) > MAX_PENDING else None
            if evicted is not None:
                _close(evicted)  # its handshake thread sees the close and ends
            _background(self._admit, "rdzv-handshake", peer)

    def _admit(self, peer: socket.socket) -> None:
        peer.settimeout(HANDSHAKE_SECONDS)
        proven = self._handshake(peer)
        with self._lock, contextlib.suppress(ValueError):
            self._pending.remove(peer)
        if not proven:
            self.refused += 1
            _close(peer)
            return
        try:
            store = socket.create_connection(self.store, timeout=HANDSHAKE_SECONDS)
        except OSError:
            _close(peer)
            return
        peer.settimeout(None)
        store.settimeout(None)
        _pipe(peer, store)

    def _handshake(self, peer: socket.socket) -> bool:
        hello = _read_exactly(peer, len(MAGIC) + NONCE)
        if hello is None or not hello.startswith(MAGIC):
            return False
        theirs, ours = hello[len(MAGIC) :], os.urandom(NONCE)
        try:
            peer.sendall(ours + mac(self.token, "store server", theirs, ours))
        except OSError:
            return False
        proof = _read_exactly(peer, 32)
        return proof is not None and hmac.compare_digest(proof, mac(self.token, "store join", theirs, ours))


class StoreForwarder:
    """On a joined host: the agent's way to the server's store. Listens on loopback (the
    agent's ``--rdzv-endpoint``); each connection is proven to the gate at ``gate`` first."""

    def __init__(self, gate: tuple[str, int], token: str) -> None:
        self.gate = gate
        self.token = token.encode()
        self.failure: str | None = None  # why the gate's proof failed, once it did
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.endpoint = f"127.0.0.1:{self.sock.getsockname()[1]}"
        _background(self._accept, "rdzv-forwarder")

    def close(self) -> None:
        _close(self.sock)

    def _accept(self) -> None:
        while True:
            try:
                agent, _ = self.sock.accept()
            except OSError:
                return
            _background(self._forward, "rdzv-forward", agent)

    def _forward(self, agent: socket.socket) -> None:
        try:
            gate = socket.create_connection(self.gate, timeout=HANDSHAKE_SECONDS)
        except OSError as exc:
            log.warning("cannot reach the rendezvous at %s:%d: %s", *self.gate, exc)
            _close(agent)
            return
        if not self._handshake(gate):
            _close(agent, gate)
            return
        gate.settimeout(None)
        _pipe(agent, gate)

    def _handshake(self, gate: socket.socket) -> bool:
        ours = os.urandom(NONCE)
        try:
            gate.sendall(MAGIC + ours)
        except OSError:
            return False
        answer = _read_exactly(gate, NONCE + 32)
        if answer is None:
            return False  # the gate closed: it refused this host (or is gone)
        theirs, proof = answer[:NONCE], answer[NONCE:]
        if not hmac.compare_digest(proof, mac(self.token, "store server", ours, theirs)):
            self.failure = f"the rendezvous at {self.gate[0]}:{self.gate[1]} did not prove that it holds the join token"
            log.error("%s: not passing the agent's connection on", self.failure)
            return False
        with contextlib.suppress(OSError):
            gate.sendall(mac(self.token, "store join", ours, theirs))
            return True
        return False
