"""The HTTP listener: uvicorn, bound by us, with what production needs around it.

- SIGTERM/SIGINT start a drain instead of an immediate stop (a second one stops now), and
  uvicorn does not re-raise the signal afterwards (the server exits 0 after draining);
- what one client may hold is bounded (``GuardedProtocol``): a request's head must arrive
  within ``header_timeout`` seconds of the connection (or of the request's first byte) and
  be at most ``max_header_bytes`` (431); its body must arrive within ``body_timeout``
  seconds of the head (408); every 401 and 413, and every answer given before the body
  arrived, closes the connection;
- at most ``max_connections`` connections at once (uvicorn answers 503 beyond), but
  ``/health/*`` is answered past the cap: a probe tells a full server from a dead one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
from collections.abc import Iterator
from http import HTTPStatus
from typing import Any, ClassVar

import msgspec
import uvicorn
from uvicorn._types import ASGI3Application, ASGIReceiveCallable, ASGISendCallable, ASGISendEvent, Scope
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle

from para_attn_server.errors import ConfigurationError
from para_attn_server.http.schemas import ErrorBody
from para_attn_server.settings import HttpSettings
from para_attn_server.workers.executor import listening_socket

#: ``/health/*`` is answered past ``--max-connections`` while fewer than the cap and this many
#: requests are in flight: slots that only probes can take, and cannot hold (their handlers
#: answer at once, without reading a body), so a slow client cannot take them too.
HEALTH_RESERVE = 8
HEALTH = b"/health/"
#: Answers that end the connection even when the request was read whole: a client refused
#: for its key or its size has nothing more to say on it.
CLOSING = frozenset({401, 413})


def config(app: Any, http: HttpSettings, log_level: str) -> uvicorn.Config:
    """uvicorn's config. Its loggers get no handler or format of their own (``log_config=None``):
    their lines go through the process's (``logs.configure_logging``). The access log (a line
    per request) shows at ``--log-level DEBUG`` only: the job lines say what happens to jobs,
    and a line per poll of each client would drown them."""
    limits = {
        "header_timeout": http.header_timeout,
        "max_header_bytes": http.max_header_bytes,
        "body_timeout": http.body_timeout,
    }
    made = uvicorn.Config(
        app,
        http=type("GuardedProtocol", (GuardedProtocol,), limits),
        log_config=None,
        log_level=log_level.lower(),
        access_log=True,
        lifespan="on",
        timeout_graceful_shutdown=5,
        timeout_keep_alive=http.keepalive_timeout,
        limit_concurrency=http.max_connections,
    )
    # uvicorn logs each request at INFO; made after the Config, which sets the level it was given.
    logging.getLogger("uvicorn.access").setLevel(logging.DEBUG if log_level.upper() == "DEBUG" else logging.WARNING)
    return made


class GuardedProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, with what one client may hold bounded (the module's doc).

    The head cap is kept by never giving the parser more than what is left of it (the parser
    keeps what it is given until a header line ends). A head that begins inside a read
    already given to the parser (a pipelined request, a chunked body's trailers) may take
    the rest of that read (at most 256 KiB) beyond the cap."""

    header_timeout: ClassVar[float] = 10.0
    max_header_bytes: ClassVar[int] = 64 * 1024
    body_timeout: ClassVar[float] = 60.0
    _head_timer: asyncio.TimerHandle | None = None
    _body_timer: asyncio.TimerHandle | None = None
    _head_left: int | None = None  # bytes the head being read may still take; None in a body
    _reading_body = False  # the newest request's head is read, its body not yet whole
    _lingering = False  # answered before its body arrived: the rest is read and dropped

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._head_left = self.max_header_bytes
        self._start_head_timer()

    def data_received(self, data: bytes) -> None:
        if self._lingering:
            return
        while self._head_left is not None and data:
            if self._head_left == 0:
                self._head_too_large()
                return
            piece, data = data[: self._head_left], data[self._head_left :]
            self._head_left -= len(piece)
            super().data_received(piece)  # its callbacks reset _head_left where a head ends or begins
            if self.transport.is_closing():
                return
        if data:
            super().data_received(data)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self._head_timer is None:  # the next request on a kept-alive connection
            self._start_head_timer()

    def on_headers_complete(self) -> None:
        self._stop_head_timer()
        self._head_left = None
        self._reading_body = True
        # uvicorn reads the cap from here; a health request gets the reserve beyond it.
        cap = self.config.limit_concurrency
        reserve = cap is not None and self.url.startswith(HEALTH) and len(self.tasks) < cap + HEALTH_RESERVE
        self.limit_concurrency = None if reserve else cap
        super().on_headers_complete()

    def on_chunk_header(self) -> None:
        # After the last chunk come trailers, parsed as headers are: a chunk header gets a
        # head's budget until its data shows that it was not the last.
        self._head_left = self.max_header_bytes

    def on_body(self, body: bytes) -> None:
        self._head_left = None
        super().on_body(body)

    def on_message_complete(self) -> None:
        self._stop_body_timer()
        self._reading_body = False
        self._head_left = self.max_header_bytes  # the next request's head
        super().on_message_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_head_timer()
        self._stop_body_timer()
        super().connection_lost(exc)

    def _start_asgi_task(self, cycle: RequestResponseCycle, app: ASGI3Application) -> None:
        super()._start_asgi_task(cycle, self._closing(cycle, app))
        # A request queued behind another is not read until it starts: its time starts then.
        if cycle is self.cycle and self._reading_body and self._body_timer is None:
            self._body_timer = self.loop.call_later(self.body_timeout, self._body_too_slow)

    def _closing(self, cycle: RequestResponseCycle, app: ASGI3Application) -> ASGI3Application:
        """``app``, its answer closing the connection when it is a 401 or a 413 or comes
        before the request's body arrived (the client could go on sending it for ever)."""

        async def guarded(scope: Scope, receive: ASGIReceiveCallable, send: ASGISendCallable) -> None:
            async def send_closing(message: ASGISendEvent) -> None:
                early = cycle is self.cycle and self._reading_body
                if message["type"] == "http.response.start" and (message["status"] in CLOSING or early):
                    cycle.keep_alive = False  # uvicorn says "connection: close", and closes after
                last = message["type"] == "http.response.body" and not message.get("more_body", False)
                if not (last and early and not cycle.keep_alive):
                    await send(message)
                    return
                # Closed now, the unread body would make the kernel reset the connection, and
                # the client, still sending, might never read the answer: read it and drop it
                # until the client closes, or the keep-alive or body timeout.
                cycle.keep_alive = True
                await send(message)
                self._lingering = True
                if self.transport.can_write_eof() and not self.transport.is_closing():
                    self.transport.write_eof()

            await app(scope, receive, send_closing)

        return guarded

    def _head_too_large(self) -> None:
        if self.cycle is None or self.cycle.response_complete:
            self._answer(431, "the request head is larger than --max-header-bytes")
        else:  # a chunked body's trailers, or a request pipelined behind one still answering
            self.transport.close()

    def _body_too_slow(self) -> None:
        self._body_timer = None
        if self._lingering or self.cycle.response_started:
            self.transport.close()
            return
        self.cycle.disconnected = True  # the app's answer, if it comes, is not written after ours
        self.cycle.message_event.set()
        self._answer(408, "the request body did not arrive within --body-timeout")

    def _answer(self, status: int, message: str) -> None:
        """An answer of our own, then the connection closed: the request cannot be read on."""
        body = msgspec.json.encode(ErrorBody(message))
        lines = [f"HTTP/1.1 {status} {HTTPStatus(status).phrase}".encode()]
        lines += [name + b": " + value for name, value in self.server_state.default_headers]
        lines += [b"content-type: application/json", b"content-length: %d" % len(body), b"connection: close"]
        self.transport.write(b"\r\n".join(lines) + b"\r\n\r\n" + body)
        self.transport.close()

    def _start_head_timer(self) -> None:
        self._head_timer = self.loop.call_later(self.header_timeout, self._head_too_slow)

    def _stop_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _stop_body_timer(self) -> None:
        if self._body_timer is not None:
            self._body_timer.cancel()
            self._body_timer = None

    def _head_too_slow(self) -> None:
        self._head_timer = None
        self.transport.close()


class HttpServer(uvicorn.Server):
    """uvicorn, with SIGTERM/SIGINT routed to our drain instead of an immediate stop, and
    without uvicorn's re-raising of the signal afterwards (we exit 0 after draining)."""

    on_signal: Any = None
    _draining = False

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._signalled)
        try:
            yield
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)

    def _signalled(self) -> None:
        if self.on_signal is None or self._draining:
            self.should_exit = True  # not ready yet, or a second signal: stop now
            return
        self._draining = True
        self.on_signal()


def bind(host: str, port: int) -> socket.socket:
    try:
        sock = listening_socket(host, port, 2048)
    except OSError as exc:
        raise ConfigurationError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    sock.set_inheritable(False)
    os.set_blocking(sock.fileno(), False)
    return sock
