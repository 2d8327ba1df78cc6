"""This rank's control connection to the server: reports out; jobs and cancels in."""

from __future__ import annotations

import collections
import logging
import os
import queue
import select
import socket
import threading
from collections.abc import Callable

import msgspec

from para_attn_server.protocol import (
    CancelJob,
    Heartbeat,
    Hello,
    RankMessage,
    RunJob,
    ServerMessage,
    Shutdown,
    recv_server_message,
    wire,
)
from para_attn_server.workers.executor import RankSpec

log = logging.getLogger("para_attn_server.rank")


class ControlLink:
    """This rank's connection to the server: sends reports, receives jobs and cancels.

    A rank reads its connection on its main thread: while idle it waits on the socket
    itself, and rank 0 polls for a cancel at each step boundary without blocking, so a job
    reaches a rank without a thread hand-off. Only a predictor that is cancelled by
    interrupt (``Predictor.cancel_by_interrupt``) needs the background reader, which
    applies a cancel the moment it arrives, on every rank.
    """

    def __init__(self, spec: RankSpec, rank: int) -> None:
        self.rank = rank
        self.cancelled: set[str] = set()
        self._pending: collections.deque[RunJob | Shutdown] = collections.deque()
        self._inbox: queue.Queue[RunJob | Shutdown] | None = None  # set in threaded mode
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self.sock = socket.create_connection((spec.control_host, spec.control_port), timeout=60)
        self.sock.settimeout(None)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        pid, host = os.getpid(), socket.gethostname()
        self.send(Hello(rank, spec.world_size, spec.token, spec.generation, pid, host, spec.node, spec.join_token))
        beat = threading.Thread(target=self._beat, args=(spec.settings.heartbeat_interval,), daemon=True)
        beat.start()

    def send(self, message: RankMessage) -> None:
        frame, output = wire(message)
        try:
            with self._lock:
                self.sock.sendall(frame)
                if output is not None:
                    self.sock.sendall(output)
        except OSError:
            self._server_gone()

    def start_reader(self, on_cancel: Callable[[str], None]) -> None:
        """Read in a background thread and call ``on_cancel`` as soon as a cancel arrives."""
        inbox: queue.Queue[RunJob | Shutdown] = queue.Queue()
        self._inbox = inbox

        def read() -> None:
            while True:
                message = self._recv()
                if isinstance(message, CancelJob):
                    self.cancelled.add(message.job_id)
                    on_cancel(message.job_id)
                else:
                    inbox.put(message)

        threading.Thread(target=read, name="control-reader", daemon=True).start()

    def receive(self) -> RunJob | Shutdown:
        """The next job or shutdown (cancels that arrive first are taken on the way)."""
        if self._inbox is not None:
            return self._inbox.get()
        while not self._pending:
            self._take(self._recv())
        return self._pending.popleft()

    def poll_cancels(self) -> None:
        """Take whatever the server sent, without waiting (a step boundary on rank 0)."""
        if self._inbox is None:
            while select.select([self.sock], [], [], 0)[0]:
                self._take(self._recv())

    def _take(self, message: ServerMessage) -> None:
        if isinstance(message, CancelJob):
            self.cancelled.add(message.job_id)
        else:
            self._pending.append(message)

    def _recv(self) -> ServerMessage:
        try:
            message = recv_server_message(self.sock)
        except (OSError, msgspec.DecodeError):
            message = None
        if message is None:
            self._server_gone()
            raise SystemExit(3)
        return message

    def _beat(self, interval: float) -> None:
        while not self._stop.wait(interval):
            self.send(Heartbeat(self.rank))

    def _server_gone(self) -> None:
        if self._stop.is_set():
            return
        # Nobody is left to report to: exit at once rather than linger as an orphan.
        log.error("rank %d: lost the connection to the server, exiting", self.rank)
        os._exit(3)

    def close(self) -> None:
        self._stop.set()
        self.sock.close()
