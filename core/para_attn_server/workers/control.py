"""The server's end of the rank control connections: listening, authenticating, framing.

Each worker group listens on a port of its own. A connection must open with a ``Hello``
frame of at most ``HELLO_LIMIT`` bytes within ``HELLO_TIMEOUT`` seconds that the group
accepts (its generation's token); until then it can make the server hold nothing more.
A rank sends its hello as it connects, and it is read as soon as it arrives, so strangers
waiting in its place never block a rank: past ``MAX_PENDING`` connections waiting, a new
one evicts the oldest that had ``HELLO_GRACE`` seconds to say hello, and none younger than
that is evicted (up to ``MAX_WAITING``, past which new ones are closed at once). Refusing
the newest instead refused the ranks' hellos while 16 silent connections were held; evicting
any oldest one let a stranger that reconnects as soon as it is closed evict a rank.
After the hello, frames are capped at the largest output a rank may send plus ``FRAME_OVERHEAD``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import msgspec

from para_attn_server.protocol import HEADER, Hello, JobEnded, RankMessage, rank_message_decoder
from para_attn_server.workers.exactreader import ExactReader

log = logging.getLogger("para_attn_server.control")

HELLO_LIMIT = 4096
HELLO_TIMEOUT = 5.0
HELLO_GRACE = 1.0  # a connection younger than this is never evicted
MAX_PENDING = 16  # connections waiting for their hello past which the oldest are evicted
MAX_WAITING = 128  # past this (none old enough to evict) new ones are closed; 64 KiB read buffer each
FRAME_OVERHEAD = 64 * 1024


class FrameTooLargeError(Exception):
    pass


@dataclass
class RankLink:
    """One rank's authenticated connection."""

    rank: int
    pid: int
    hostname: str
    transport: asyncio.Transport
    last_seen: float
    node: str = ""  # the joined host it runs on ("" on the server's own)
    setup_done: bool = False

    def send_frame(self, frame: bytes | bytearray) -> None:
        if not self.transport.is_closing():
            self.transport.write(frame)

    def close(self) -> None:
        self.transport.close()


class ControlListener:
    """Accepts rank connections for one group and hands their messages to it.

    ``accept(hello)`` says whether a hello belongs to the current generation;
    ``on_message(link, message)`` gets the hello and every later message, and returns False
    when the link is no longer wanted (an earlier generation's); ``on_closed(link)`` runs
    when an accepted connection ends.
    """

    def __init__(
        self,
        host: str,
        max_frame: int,
        accept: Callable[[Hello], bool],
        on_message: Callable[[RankLink, Any], bool],
        on_closed: Callable[[RankLink], None],
    ) -> None:
        self.host = host
        self.max_frame = max_frame + FRAME_OVERHEAD
        self._accept = accept
        self._on_message = on_message
        self._on_closed = on_closed
        self._server: asyncio.base_events.Server | None = None
        # connections that have not said hello, oldest first, with when they came
        self._pending: dict[asyncio.Transport, float] = {}
        self._connections: set[asyncio.Task[None]] = set()  # each accepted connection's task, kept alive
        self.port = 0

    async def open(self) -> int:
        loop = asyncio.get_running_loop()
        # The kernel queues a burst of connections rather than making them retry: their age,
        # which decides eviction, starts when they are accepted.
        self._server = await loop.create_server(self._reader, self.host, 0, backlog=2 * MAX_WAITING)
        self.port = self._server.sockets[0].getsockname()[1]
        return self.port

    def close(self) -> None:
        if self._server is not None:
            self._server.close()

    def _reader(self) -> ExactReader:
        def connected(reader: ExactReader, transport: asyncio.Transport) -> None:
            if not self._make_room():
                transport.close()
                return
            self._pending[transport] = time.monotonic()
            task = asyncio.create_task(self._serve(reader, transport))
            self._connections.add(task)
            task.add_done_callback(self._connections.discard)

        return ExactReader(connected)

    def _make_room(self) -> bool:
        """Whether one more connection may wait for its hello, evicting old silent ones."""
        evict_before = time.monotonic() - HELLO_GRACE
        while len(self._pending) >= MAX_PENDING:
            oldest, came = next(iter(self._pending.items()))
            if came > evict_before:
                return len(self._pending) < MAX_WAITING
            del self._pending[oldest]
            oldest.close()  # its hello read ends: its task closes it for good
        return True

    async def _serve(self, reader: ExactReader, transport: asyncio.Transport) -> None:
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):  # evicted and closed already
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        link = None
        try:
            hello = await self._hello(reader, transport)
            if hello is None:
                return
            link = RankLink(hello.rank, hello.pid, hello.hostname, transport, time.monotonic(), hello.node)
            wanted = self._on_message(link, hello)
            while wanted:
                message = await read_frame(reader, self.max_frame)
                link.last_seen = time.monotonic()
                wanted = self._on_message(link, message)
        except (asyncio.IncompleteReadError, ConnectionError, TimeoutError, msgspec.DecodeError, FrameTooLargeError):
            pass
        finally:
            transport.close()
            if link is not None:
                self._on_closed(link)

    async def _hello(self, reader: ExactReader, transport: asyncio.Transport) -> Hello | None:
        try:
            message = await asyncio.wait_for(read_frame(reader, HELLO_LIMIT), HELLO_TIMEOUT)
        finally:
            self._pending.pop(transport, None)
        if isinstance(message, Hello) and self._accept(message):
            return message
        return None  # a stale rank of an earlier generation, or a stranger


async def read_frame(reader: ExactReader, limit: int) -> RankMessage:
    """The next message, with the output that follows a ``JobEnded`` frame (``wire``)."""
    (size,) = HEADER.unpack(await reader.readexactly(HEADER.size))
    if size > limit:
        raise FrameTooLargeError(size)
    message: RankMessage = rank_message_decoder.decode(await reader.readexactly(size))
    if isinstance(message, JobEnded) and message.output_size:
        if message.output_size > limit:
            raise FrameTooLargeError(message.output_size)
        output = await reader.readexactly(message.output_size)
        message = msgspec.structs.replace(message, output=output, output_size=0)
    return message
