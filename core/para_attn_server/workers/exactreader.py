"""A socket reader for frames whose size is known before they arrive.

``readexactly(n)`` of more than the staging buffer holds gets a buffer of exactly ``n``
bytes that the socket reads into directly (``asyncio.BufferedProtocol``), and wakes its
reader once, when it is full. asyncio's ``StreamReader`` copies every chunk into a growing
buffer and the frame out of it again, and wakes its reader at every chunk: for a 16 MiB
output that was most of the event loop's CPU per job
(``python -m benchmarks.profile native-16m``). Smaller reads share the staging
buffer. While nobody reads and it is full, the socket is not read (the sender waits).
"""

from __future__ import annotations

import asyncio
import typing
from collections.abc import Callable

STAGING = 64 * 1024  # holds any control frame but an output (previews are ~10-30 KB)


class ExactReader(asyncio.BufferedProtocol):
    def __init__(self, connected: Callable[[ExactReader, asyncio.Transport], None], staging: int = STAGING) -> None:
        self._connected = connected
        self._stage = bytearray(staging)
        self._start = 0  # the bytes received and not yet read: _stage[_start:_end]
        self._end = 0
        self._large: bytearray | None = None  # a large read's own buffer, while it fills
        self._filled = 0
        self._want = 0  # bytes the waiting read needs in the staging buffer
        self._waiter: asyncio.Future[None] | None = None
        self._closed = False
        self._paused = False
        self.transport: asyncio.Transport | None = None

    # ---- the event loop's side ------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = typing.cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self._connected(self, self.transport)

    def get_buffer(self, sizehint: int) -> memoryview:
        if self._large is not None:
            return memoryview(self._large)[self._filled :]
        if self._start == self._end:
            self._start = self._end = 0
        elif self._end == len(self._stage):  # room only at the front: move the unread bytes there
            unread = self._end - self._start
            self._stage[:unread] = self._stage[self._start : self._end]
            self._start, self._end = 0, unread
        return memoryview(self._stage)[self._end :]

    def buffer_updated(self, nbytes: int) -> None:
        if self._large is not None:
            self._filled += nbytes
            if self._filled == len(self._large):
                self._large = None  # full: later bytes go to the staging buffer
                self._wake()
            return
        self._end += nbytes
        if self._end - self._start >= self._want:
            self._wake()
        if self._start == 0 and self._end == len(self._stage):
            self._pause()

    def eof_received(self) -> bool:
        self._closed = True
        self._wake()
        return False  # close the transport

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = True
        self._wake()

    # ---- the reader's side ----------------------------------------------------------

    async def readexactly(self, n: int) -> bytes:
        """The next ``n`` bytes; ``IncompleteReadError`` if the connection ends first."""
        if n <= len(self._stage):
            while self._end - self._start < n:
                self._want = n
                await self._wait(n)
            self._want = 0
            data = bytes(self._stage[self._start : self._start + n])
            self._start += n
            self._resume()
            return data
        large = bytearray(n)
        staged = self._end - self._start  # less than n: all of it belongs to this read
        large[:staged] = self._stage[self._start : self._end]
        self._start = self._end
        self._large, self._filled = large, staged
        self._resume()
        try:
            while self._large is large:
                await self._wait(n)
        finally:
            self._large = None
        return bytes(large)

    async def _wait(self, expected: int) -> None:
        if self._closed:
            raise asyncio.IncompleteReadError(b"", expected)  # what was read so far is of no use here
        self._waiter = asyncio.get_running_loop().create_future()
        try:
            await self._waiter
        finally:
            self._waiter = None

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def _pause(self) -> None:
        if not self._paused and self.transport is not None:
            self._paused = True
            self.transport.pause_reading()

    def _resume(self) -> None:
        if self._paused and self.transport is not None and not self._closed:
            self._paused = False
            self.transport.resume_reading()
