"""protocol: length-prefixed msgpack frames between the server and the ranks."""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Iterator

import msgspec
import pytest

from para_attn_server.protocol import (
    CancelJob,
    Heartbeat,
    Hello,
    JobEnded,
    Progress,
    RankMessage,
    RunJob,
    ServerMessage,
    SetupDone,
    SetupFailed,
    Shutdown,
    encode_frame,
    recv_server_message,
    wire,
)
from para_attn_server.workers.control import FrameTooLargeError, read_frame
from tests.unit.fakes import exact_reader

SERVER_MESSAGES: list[ServerMessage] = [
    RunJob("job-1", {"prompt": "a cat", "steps": 4, "size": [32, 32], "output_path": None}),
    CancelJob("job-1"),
    Shutdown(),
]
RANK_MESSAGES: list[RankMessage] = [
    Hello(rank=1, world_size=2, token="t0k3n", generation=3, pid=4242, hostname="host-a"),
    SetupDone(rank=0),
    SetupFailed(rank=1, error="RuntimeError: no weights"),
    Heartbeat(rank=1),
    Progress("job-1", step=2, total=4),
    Progress("job-1", step=2, total=None),
    JobEnded("job-1", rank=0, status="succeeded", output=b"\x89PNG\x00\xff", file_type="png"),
    JobEnded("job-1", rank=1, status="failed", error="rank 1: ValueError: boom"),
    JobEnded("job-1", rank=1, status="cancelled"),
]


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    left, right = socket.socketpair()
    with left, right:
        yield left, right


async def read_rank_messages(sock: socket.socket, count: int, limit: int = 1 << 30) -> list[RankMessage]:
    """The server's own reader (``control.read_frame`` on an ``ExactReader``) on the receiving end."""
    reader, transport = await exact_reader(sock)
    try:
        return [await read_frame(reader, limit) for _ in range(count)]
    finally:
        transport.close()


@pytest.mark.parametrize("message", SERVER_MESSAGES, ids=lambda m: type(m).__name__)
def test_server_message_round_trips_over_a_socket(
    pair: tuple[socket.socket, socket.socket], message: ServerMessage
) -> None:
    sender, receiver = pair
    sender.sendall(encode_frame(message))

    assert recv_server_message(receiver) == message


@pytest.mark.anyio
async def test_rank_messages_round_trip_through_the_servers_reader(pair: tuple[socket.socket, socket.socket]) -> None:
    sender, receiver = pair
    for message in RANK_MESSAGES:
        frame, output = wire(message)
        sender.sendall(frame + (output or b""))

    assert await read_rank_messages(receiver, len(RANK_MESSAGES)) == RANK_MESSAGES


@pytest.mark.anyio
async def test_an_output_travels_after_its_frame_as_it_is(pair: tuple[socket.socket, socket.socket]) -> None:
    sender, receiver = pair
    output = os.urandom(1 << 20)
    message = JobEnded("job-1", rank=0, status="succeeded", output=output, file_type="png")
    frame, after = wire(message)
    thread = threading.Thread(target=lambda: (sender.sendall(frame), sender.sendall(after or b"")))
    thread.start()

    (received,) = await read_rank_messages(receiver, 1)
    thread.join()

    assert after is output  # not copied into the frame
    assert len(frame) < 1024
    assert isinstance(received, JobEnded)
    assert received.output == output


@pytest.mark.anyio
async def test_an_output_over_the_limit_is_refused_before_it_is_read(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    sender, receiver = pair
    frame, _ = wire(JobEnded("job-1", rank=0, status="succeeded", output=b"x" * 5000, file_type="bin"))
    sender.sendall(frame)  # the output itself never comes: the reader must not wait for it

    with pytest.raises(FrameTooLargeError, match="5000"):
        await read_rank_messages(receiver, 1, limit=4096)


def test_frames_sent_back_to_back_arrive_one_by_one(pair: tuple[socket.socket, socket.socket]) -> None:
    sender, receiver = pair
    sender.sendall(b"".join(encode_frame(m) for m in SERVER_MESSAGES))

    assert [recv_server_message(receiver) for _ in SERVER_MESSAGES] == SERVER_MESSAGES


def test_frame_larger_than_the_socket_buffer_is_read_whole(pair: tuple[socket.socket, socket.socket]) -> None:
    sender, receiver = pair
    message = RunJob("big", {"blob": "x" * (4 << 20)})
    thread = threading.Thread(target=sender.sendall, args=(encode_frame(message),))
    thread.start()

    received = recv_server_message(receiver)
    thread.join()

    assert received == message


def test_frame_header_is_the_big_endian_payload_length() -> None:
    frame = encode_frame(Heartbeat(rank=7))

    assert int.from_bytes(frame[:4], "big") == len(frame) - 4
    assert msgspec.msgpack.decode(frame[4:]) == {"type": "heartbeat", "rank": 7}


def test_eof_before_a_frame_returns_none(pair: tuple[socket.socket, socket.socket]) -> None:
    sender, receiver = pair
    sender.close()

    assert recv_server_message(receiver) is None


def test_eof_inside_a_frame_returns_none(pair: tuple[socket.socket, socket.socket]) -> None:
    sender, receiver = pair
    frame = encode_frame(CancelJob("job-1"))
    sender.sendall(frame[:-2])
    sender.close()

    assert recv_server_message(receiver) is None


def test_eof_inside_the_header_returns_none(pair: tuple[socket.socket, socket.socket]) -> None:
    sender, receiver = pair
    sender.sendall(b"\x00\x00")
    sender.close()

    assert recv_server_message(receiver) is None


def test_rank_message_is_not_accepted_as_a_server_message(pair: tuple[socket.socket, socket.socket]) -> None:
    sender, receiver = pair
    sender.sendall(encode_frame(Heartbeat(rank=0)))

    with pytest.raises(msgspec.ValidationError):
        recv_server_message(receiver)
