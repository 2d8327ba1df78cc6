"""The HTTP listener: uvicorn, bound by us, with what production needs around it.

- SIGTERM/SIGINT start a drain instead of an immediate stop (a second one stops now), and
  uvicorn does not re-raise the signal afterwards (the server exits 0 after draining);
- a request's head must arrive within ``header_timeout`` seconds of the connection (or of
  the request's first byte): a client that sends nothing, or half a header, is dropped
  instead of holding a connection forever (uvicorn only times out idle keep-alives);
- at most ``max_connections`` connections at once (uvicorn answers 503 beyond).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
from collections.abc import Iterator
from typing import Any, ClassVar

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from para_attn_server.errors import ConfigurationError
from para_attn_server.settings import HttpSettings
from para_attn_server.workers.executor import listening_socket


def config(app: Any, http: HttpSettings, log_level: str) -> uvicorn.Config:
    """uvicorn's config. Its loggers get no handler or format of their own (``log_config=None``):
    their lines go through the process's (``logs.configure_logging``). The access log (a line
    per request) shows at ``--log-level DEBUG`` only: the job lines say what happens to jobs,
    and a line per poll of each client would drown them."""
    protocol = type("HeaderTimeoutProtocol", (HeaderTimeoutProtocol,), {"header_timeout": http.header_timeout})
    made = uvicorn.Config(
        app,
        http=protocol,
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


class HeaderTimeoutProtocol(HttpToolsProtocol):
    header_timeout: ClassVar[float] = 10.0
    _head_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._start_head_timer()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self._head_timer is None:  # the next request on a kept-alive connection
            self._start_head_timer()

    def on_headers_complete(self) -> None:
        self._stop_head_timer()
        super().on_headers_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_head_timer()
        super().connection_lost(exc)

    def _start_head_timer(self) -> None:
        self._head_timer = self.loop.call_later(self.header_timeout, self._head_too_slow)

    def _stop_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

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
