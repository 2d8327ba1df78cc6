"""decisions.SocketDecisions: rank 0's step decisions reach every rank over loopback,
only the group's ranks may connect, and a job's leftover decisions never leak into the
next job. Ranks are threads here; the integration suite runs them as processes."""

from __future__ import annotations

import socket
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor

import pytest

from para_attn_server.rank.decisions import HELLO, SocketDecisions

TOKEN = "0123456789abcdef0123456789abcdef"


class PortBoard:
    """Stands in for the setup broadcast: rank 0 posts its port, the others wait for it."""

    def __init__(self) -> None:
        self.port: Future[int] = Future()

    def share(self, port: int) -> int:
        if port:
            self.port.set_result(port)
        return self.port.result(timeout=10)


def open_group(world_size: int, token: Callable[[int], str] = lambda rank: TOKEN) -> list[SocketDecisions]:
    board = PortBoard()
    with ThreadPoolExecutor(world_size) as pool:
        futures = [
            pool.submit(SocketDecisions, rank, world_size, token(rank), board.share, 5.0) for rank in range(world_size)
        ]
        return [future.result(timeout=10) for future in futures]


def follow(channel: SocketDecisions, steps: int) -> list[bool]:
    return [channel.decide(False) for _ in range(steps)]


def test_every_rank_gets_each_decision_of_rank_0_in_order() -> None:
    group = open_group(3)
    stops = [False, False, True, False]
    try:
        for channel in group:
            channel.begin_job()
        with ThreadPoolExecutor(2) as pool:
            followers = [pool.submit(follow, channel, len(stops)) for channel in group[1:]]
            led = [group[0].decide(stop) for stop in stops]
            assert led == stops
            assert [f.result(timeout=10) for f in followers] == [stops, stops]
    finally:
        for channel in group:
            channel.close()


def test_decisions_left_from_an_earlier_job_are_skipped() -> None:
    leader, follower = open_group(2)
    try:
        leader.begin_job()
        follower.begin_job()
        # The follower left job 1 early (it failed) while rank 0 went on deciding.
        leader.decide(True)
        leader.decide(True)
        leader.begin_job()
        follower.begin_job()
        leader.decide(False)

        assert follower.decide(True) is False  # job 2's decision, not job 1's leftovers
    finally:
        leader.close()
        follower.close()


def test_a_connection_without_the_token_is_refused() -> None:
    board = PortBoard()
    with ThreadPoolExecutor(2) as pool:
        leader = pool.submit(SocketDecisions, 0, 2, TOKEN, board.share, 5.0)
        port = board.share(0)
        stranger = socket.create_connection(("127.0.0.1", port))
        stranger.sendall(HELLO.pack(1, b"f" * 32))
        follower = pool.submit(SocketDecisions, 1, 2, TOKEN, board.share, 5.0)
        group = [leader.result(timeout=10), follower.result(timeout=10)]
    try:
        assert stranger.recv(1) == b""  # closed by rank 0
        for channel in group:
            channel.begin_job()
        group[0].decide(True)
        assert group[1].decide(False) is True  # the real rank 1 got the connection
    finally:
        stranger.close()
        for channel in group:
            channel.close()


def test_a_follower_whose_leader_left_fails_instead_of_waiting() -> None:
    leader, follower = open_group(2)
    follower.begin_job()
    leader.close()
    with pytest.raises(ConnectionError, match="closed"):
        follower.decide(False)
    follower.close()


def test_a_follower_waits_no_longer_than_the_timeout() -> None:
    board = PortBoard()
    with ThreadPoolExecutor(2) as pool:
        futures = [pool.submit(SocketDecisions, rank, 2, TOKEN, board.share, 0.2) for rank in range(2)]
        leader, follower = (f.result(timeout=10) for f in futures)
    try:
        follower.begin_job()
        with pytest.raises(TimeoutError):
            follower.decide(False)
    finally:
        leader.close()
        follower.close()
