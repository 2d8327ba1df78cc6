"""exactreader: reads of known sizes over a real socket pair, on the real event loop."""

from __future__ import annotations

import asyncio
import os
import random
import socket
import threading
from collections.abc import AsyncIterator

import pytest

from para_attn_server.workers.exactreader import ExactReader
from tests.unit.fakes import exact_reader

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(30, method="thread")]

STAGING = 1024  # small, so that modest sizes take the large path


@pytest.fixture(params=[("asyncio", {}), ("asyncio", {"use_uvloop": True})], ids=["asyncio", "uvloop"])
def anyio_backend(request: pytest.FixtureRequest) -> tuple[str, dict[str, bool]]:
    """Both event loops: the server runs on uvloop, whose transports call the protocol their own way."""
    return request.param  # type: ignore[no-any-return]


@pytest.fixture
async def pair() -> AsyncIterator[tuple[socket.socket, ExactReader, asyncio.Transport]]:
    """A blocking sender and an ExactReader on the other end."""
    sender, receiver = socket.socketpair()
    reader, transport = await exact_reader(receiver, STAGING)
    try:
        yield sender, reader, transport
    finally:
        transport.close()
        sender.close()


def send_in_pieces(sock: socket.socket, data: bytes, seed: int) -> threading.Thread:
    """Send ``data`` in pieces of random sizes from another thread (as a rank does)."""
    pieces = random.Random(seed)

    def run() -> None:
        view = memoryview(data)
        while view:
            size = pieces.choice([1, 7, STAGING - 1, STAGING, STAGING + 1, 50_000])
            sock.sendall(view[:size])
            view = view[size:]

    thread = threading.Thread(target=run)
    thread.start()
    return thread


async def test_reads_of_every_size_return_the_bytes_in_order(
    pair: tuple[socket.socket, ExactReader, asyncio.Transport],
) -> None:
    sender, reader, _ = pair
    sizes = [4, 1, STAGING - 1, STAGING, STAGING + 1, 3 * STAGING, 2 << 20, 0, 4, 5 << 20, 17]
    data = os.urandom(sum(sizes))
    thread = send_in_pieces(sender, data, seed=1)

    reads = [await reader.readexactly(size) for size in sizes]
    thread.join()

    assert b"".join(reads) == data
    assert [len(read) for read in reads] == sizes


async def test_a_large_read_starts_with_what_is_already_staged(
    pair: tuple[socket.socket, ExactReader, asyncio.Transport],
) -> None:
    sender, reader, _ = pair
    data = os.urandom(10 * STAGING)
    sender.sendall(data[:100])
    assert await reader.readexactly(10) == data[:10]  # 90 bytes of the next read wait staged
    thread = send_in_pieces(sender, data[100:], seed=2)

    rest = await reader.readexactly(len(data) - 10)
    thread.join()

    assert rest == data[10:]


async def test_a_reader_that_does_not_read_stops_the_socket_at_the_staging_size(
    pair: tuple[socket.socket, ExactReader, asyncio.Transport],
) -> None:
    sender, reader, transport = pair
    data = os.urandom(8 << 20)  # far more than the kernel buffers between the two ends
    thread = threading.Thread(target=sender.sendall, args=(data,))
    thread.start()
    for _ in range(10_000):  # loop turns, not time: the reader takes in STAGING bytes, then stops
        if not transport.is_reading():
            break
        await asyncio.sleep(0)

    assert not transport.is_reading()
    assert thread.is_alive()  # the sender waits: nobody holds the rest
    got = await reader.readexactly(len(data))
    thread.join()

    assert got == data


async def test_the_connection_ending_inside_a_read_raises_incomplete_read(
    pair: tuple[socket.socket, ExactReader, asyncio.Transport],
) -> None:
    sender, reader, _ = pair
    sender.sendall(b"x" * (3 * STAGING))
    sender.shutdown(socket.SHUT_WR)

    with pytest.raises(asyncio.IncompleteReadError):
        await reader.readexactly(4 * STAGING)


async def test_the_connection_ending_inside_a_small_read_raises_incomplete_read(
    pair: tuple[socket.socket, ExactReader, asyncio.Transport],
) -> None:
    sender, reader, _ = pair
    sender.sendall(b"xy")
    sender.shutdown(socket.SHUT_WR)

    assert await reader.readexactly(1) == b"x"
    with pytest.raises(asyncio.IncompleteReadError):
        await reader.readexactly(2)
