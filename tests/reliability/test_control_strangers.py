"""Strangers on the ranks' sockets never block a rank: the group's control port and the step-decision
socket between rank 0 and the other ranks.

A stranger that connects and says nothing may hold a pending slot for a few seconds, but a rank's
hello is read the moment it arrives: when the pending slots are full, the oldest stranger goes,
not the rank. Rank 0 reads every connection to its decision socket at once, so a silent one
delays no rank, and it is dropped after a few seconds instead of the collective timeout.
"""

from __future__ import annotations

import os
import select
import selectors
import signal
import socket
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from types import TracebackType

import pytest

from para_attn_server.rank import decisions
from para_attn_server.rank.decisions import SocketDecisions
from para_attn_server.testing import Server
from para_attn_server.workers.control import HELLO_GRACE, HELLO_TIMEOUT, MAX_PENDING, MAX_WAITING
from tests.reliability.support import Report, generation, generation_span, until

pytestmark = pytest.mark.timeout(300)

ROUNDS = 3  # the issue saw three generations in a row fail while strangers were held
TOKEN = "0123456789abcdef0123456789abcdef"
COLLECTIVE_TIMEOUT = 1800.0  # --collective-timeout's default: what a silent stranger could stall


class Strangers:
    """``count`` silent connections to ``port``, each reopened as soon as the server closes it
    (as an attacker keeping the server's pending slots full would)."""

    def __init__(self, port: int, count: int) -> None:
        self.port = port
        self.closed = 0  # connections the server closed
        self._stop = threading.Event()
        self._selector = selectors.DefaultSelector()
        for _ in range(count):
            self._open()
        self._thread = threading.Thread(target=self._hold, daemon=True)
        self._thread.start()

    def _open(self) -> None:
        self._selector.register(socket.create_connection(("127.0.0.1", self.port)), selectors.EVENT_READ)

    def _hold(self) -> None:
        while not self._stop.is_set():
            for key, _ in self._selector.select(0.1):
                sock = key.fileobj
                assert isinstance(sock, socket.socket)
                try:
                    sent = sock.recv(1)
                except ConnectionResetError:
                    sent = b""
                assert sent == b"", "the server sent a stranger something"
                self._selector.unregister(sock)
                sock.close()
                self.closed += 1
                self._open()

    def __enter__(self) -> Strangers:
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None) -> None:
        self._stop.set()
        self._thread.join(10)
        for key in list(self._selector.get_map().values()):
            key.fileobj.close()  # type: ignore[union-attr]
        self._selector.close()


def closed_by_peer(sock: socket.socket, timeout: float) -> bool:
    sock.settimeout(timeout)
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


# ---- the group's control port ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def pair(launch: Callable[..., Server]) -> Server:
    return launch("--model", "noop", "--num-devices", "2")


def control_port(server: Server) -> int:
    return int(server.log.wait_for(r"worker group 0: ranks connect to \S+:(\d+)")[1])


def test_idle_strangers_are_capped_and_only_old_ones_evicted(pair: Server, report: Report) -> None:
    port = control_port(pair)
    extra = 24
    began = time.monotonic()
    strangers = [socket.create_connection(("127.0.0.1", port)) for _ in range(MAX_WAITING + extra)]
    try:
        assert time.monotonic() - began < HELLO_GRACE, "too slow to open them all while none may be evicted"
        # All young: none is evicted, and past MAX_WAITING the newest are closed at once.
        assert all(closed_by_peer(sock, 5.0) for sock in strangers[MAX_WAITING:])
        assert not any(readable(strangers[:MAX_WAITING]))
        assert all(closed_by_peer(sock, HELLO_TIMEOUT + 10) for sock in strangers[:MAX_WAITING])
    finally:
        for sock in strangers:
            sock.close()
    strangers = [socket.create_connection(("127.0.0.1", port)) for _ in range(MAX_PENDING)]
    try:
        time.sleep(HELLO_GRACE)  # what makes them evictable is their age
        newcomer = socket.create_connection(("127.0.0.1", port))
        strangers.append(newcomer)
        assert closed_by_peer(strangers[0], 5.0)  # the oldest made room
        assert not any(readable(strangers[1:]))
    finally:
        for sock in strangers:
            sock.close()
    assert pair.run(size=10)["state"] == "succeeded"
    report.add(
        "Integrity",
        case=f"control port: {MAX_WAITING + extra} connections at once that send nothing",
        outcome=f"{MAX_WAITING} held until the {HELLO_TIMEOUT:g} s hello timeout, the {extra} newest closed at once; "
        f"past {MAX_PENDING} waiting, a new one evicts the oldest that had {HELLO_GRACE:g} s to say hello",
    )


def readable(socks: list[socket.socket]) -> list[socket.socket]:
    """The sockets with something to read now (for a silent stranger: closed by the server)."""
    return select.select(socks, [], [], 0)[0]


@pytest.mark.parametrize("count", [MAX_PENDING, 2 * MAX_PENDING])
def test_restarts_succeed_while_strangers_hold_every_pending_slot(pair: Server, count: int, report: Report) -> None:
    first_started, first_ready, _ = generation_span(pair, 1)
    setups = []
    with Strangers(control_port(pair), count) as strangers:
        for _ in range(ROUNDS):
            restarts, number = pair.restarts(), generation(pair)
            os.kill(pair.rank_pids()[1], signal.SIGKILL)
            started, ended, how = generation_span(pair, number + 1, timeout=120)  # the first try
            assert how == "ready", f"generation {number + 1} failed with strangers held:\n{pair.log.tail(40)}"
            until(lambda: pair.restarts() == restarts + 1, 60, "the restart counted")  # noqa: B023
            setups.append(ended - started)
        assert pair.run(size=10)["state"] == "succeeded"
        evicted = strangers.closed
    report.add(
        "Integrity",
        case=f"control port: {count} silent connections held (each reopened when closed), "
        f"rank 1 SIGKILLed {ROUNDS} times",
        outcome=f"{ROUNDS} of {ROUNDS} restarts ready at the first try (setup {min(setups):.1f}-{max(setups):.1f} s; "
        f"the first, cold setup: {first_ready - first_started:.1f} s); a job succeeded; {evicted} stranger connections "
        "closed (the oldest, evicted by each rank's hello, or at the hello timeout)",
    )


# ---- the step-decision socket on rank 0 ------------------------------------------------------------


class Setup:
    """Rank 0 and rank 1 opening their decision channel in threads (as in the rank processes);
    rank 1 is given rank 0's port only once ``count`` strangers connected to it, and with
    ``rank_1_after_drop`` only once rank 0 dropped the first of them."""

    def __init__(self, count: int, rank_1_after_drop: bool = False) -> None:
        self.count = count
        self.rank_1_after_drop = rank_1_after_drop
        self.port: Future[int] = Future()
        self.strangers_in = threading.Event()
        self.strangers: list[socket.socket] = []
        self.dropped_after: float | None = None  # seconds from its connect to rank 0 closing it
        self.pool = ThreadPoolExecutor(2)

    def share(self, port: int) -> int:
        if port:
            self.port.set_result(port)
            return port
        self.strangers_in.wait(60)
        return self.port.result(30)

    def run(self) -> tuple[list[SocketDecisions], float]:
        """The two channels, and the seconds from rank 1 learning the port to both being open."""
        leader = self.pool.submit(SocketDecisions, 0, 2, TOKEN, self.share, COLLECTIVE_TIMEOUT)
        port = self.port.result(30)
        try:
            for _ in range(self.count):
                self.strangers.append(socket.create_connection(("127.0.0.1", port), timeout=10))
            connected = time.monotonic()
            if self.rank_1_after_drop and closed_by_peer(self.strangers[0], decisions.HELLO_WAIT + 10):
                self.dropped_after = time.monotonic() - connected
        finally:  # rank 1 comes in any case, or today's rank 0 would wait for it for the whole timeout
            released = time.monotonic()
            self.strangers_in.set()
            follower = self.pool.submit(SocketDecisions, 1, 2, TOKEN, self.share, COLLECTIVE_TIMEOUT)
        group = [leader.result(20), follower.result(20)]
        return group, time.monotonic() - released

    def __enter__(self) -> Setup:
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None) -> None:
        self.strangers_in.set()
        for sock in self.strangers:  # a rank 0 still reading one (today's code) moves on
            sock.close()
        self.pool.shutdown()


def decide_together(group: list[SocketDecisions]) -> None:
    try:
        for channel in group:
            channel.begin_job()
        group[0].decide(True)
        assert group[1].decide(False) is True  # the real rank 1 holds the connection
    finally:
        for channel in group:
            channel.close()


@pytest.mark.parametrize("count", [1, MAX_PENDING + 4], ids=["one", "a crowd"])
def test_silent_strangers_on_the_decision_socket_delay_no_rank(count: int, report: Report) -> None:
    with Setup(count) as setup:
        group, took = setup.run()
        decide_together(group)
        # Rank 0 stops listening once its ranks are in: whoever still waits goes with it.
        assert all(closed_by_peer(sock, 5.0) for sock in setup.strangers), "a silent stranger was kept"
    assert took < 3.0, f"the decision channel took {took:.1f} s to set up"
    report.add(
        "Integrity",
        case=f"decision socket: {count} silent connection{'s' * (count > 1)} to rank 0's just before rank 1's "
        f"(--collective-timeout {COLLECTIVE_TIMEOUT:g} s)",
        outcome=f"rank 1 accepted {took * 1000:.1f} ms after it had the port; the strangers closed as setup ended",
    )


def test_a_silent_stranger_on_the_decision_socket_is_dropped_within_seconds(report: Report) -> None:
    with Setup(1, rank_1_after_drop=True) as setup:
        group, took = setup.run()
        decide_together(group)
    assert setup.dropped_after is not None, "rank 0 kept a silent connection"
    assert decisions.HELLO_WAIT - 0.5 < setup.dropped_after < decisions.HELLO_WAIT + 5, setup.dropped_after
    assert took < 3.0
    report.add(
        "Integrity",
        case="decision socket: a silent connection to rank 0's, rank 1 coming only after it",
        outcome=f"closed after {setup.dropped_after:.1f} s (the {decisions.HELLO_WAIT:g} s hello wait; "
        f"was --collective-timeout, {COLLECTIVE_TIMEOUT:g} s); rank 1 then accepted in {took * 1000:.1f} ms",
    )
