"""``ParaAttentionServer``: wires plugins, worker group, job service and HTTP together.

``ParaAttentionServer(predictor, host, port, num_devices).run()`` is the original server's
Python entry and still works; every other setting is a keyword with a safe default.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import pickle
import signal
import socket
from collections.abc import Iterator
from dataclasses import dataclass, field, fields
from typing import Any, TypeVar

import uvicorn

from .app import create_app
from .errors import ConfigurationError
from .group import GroupSettings, WorkerGroup
from .jobs import JobService, ServiceSettings
from .journal import JobJournal
from .outputs import OutputStore
from .plugins import Plugins
from .predictor import is_legacy
from .schema import InputSchema

log = logging.getLogger("para_attn_server")


def default_num_devices() -> int:
    import torch

    return torch.cuda.device_count() or 1


@dataclass
class ServerConfig:
    """Every server setting; the CLI's options map one to one onto these fields."""

    model: str = "tiny"
    host: str = "127.0.0.1"
    port: int = 5000
    num_devices: int | None = None  # None: every CUDA device, or 1 without CUDA
    executor: str = "multiprocessing"
    backend: str | None = None
    output_dir: str = "outputs"
    max_queue: int = 64
    job_timeout: float | None = 3600.0  # a hung job restarts the group after an hour; None: never
    result_ttl: float = 3600.0
    setup_timeout: float = 1800.0
    heartbeat_interval: float = 1.0
    heartbeat_timeout: float = 30.0
    keepalive_interval: float = 30.0
    collective_timeout: float = 1800.0
    cancel_grace: float = 10.0
    error_grace: float = 3.0
    drain_timeout: float = 30.0
    max_output_bytes: int = 1 << 30
    output_memory_bytes: int = 512 * 1024 * 1024
    api_key: str | None = None  # also $PARA_ATTN_SERVER_API_KEY
    max_body_bytes: int = 10 * 1024 * 1024
    model_path: str | None = None  # also $PARA_ATTN_MODEL_PATH; the predictor's "model_path" option
    options: dict[str, str] = field(default_factory=dict)
    plugins: list[str] = field(default_factory=list)
    executor_options: dict[str, str] = field(default_factory=dict)
    log_level: str = "INFO"


class ParaAttentionServer:
    def __init__(
        self,
        predictor: object | str = "tiny",
        host: str = "127.0.0.1",
        port: int = 5000,
        num_devices: int | None = None,
        log_level: int | str = "INFO",
        **settings: Any,
    ) -> None:
        known = {f.name for f in fields(ServerConfig)}
        unknown = set(settings) - known
        if unknown:
            raise ConfigurationError(f"unknown settings: {', '.join(sorted(unknown))}")
        level = logging.getLevelName(log_level) if isinstance(log_level, int) else log_level.upper()
        self.predictor = predictor
        self.config = ServerConfig(
            model=predictor if isinstance(predictor, str) else "",
            host=host,
            port=port,
            num_devices=num_devices,
            log_level=level,
            **settings,
        )
        self.port: int | None = None  # the bound port, once listening

    def run(self) -> None:
        """Serve until SIGTERM/SIGINT (then drain and return). Raises ``SetupError`` when
        the ranks fail their first setup, ``ConfigurationError`` for a bad setting."""
        logging.basicConfig(level=self.config.log_level, format="%(asctime)s %(name)s %(levelname)s %(message)s")
        try:
            import uvloop

            runner = asyncio.Runner(loop_factory=uvloop.new_event_loop)
        except ImportError:
            runner = asyncio.Runner()
        with runner:
            runner.run(self.serve())

    async def serve(self) -> None:
        config = self.config
        plugins = Plugins.load(config.plugins)
        if isinstance(self.predictor, str):
            predictor = plugins.resolve_predictor(self.predictor)
            predictor_pickle = None
        else:
            predictor = self.predictor
            predictor_pickle = pickle.dumps(predictor)
        schema = InputSchema(predictor)
        num_devices = config.num_devices or default_num_devices()
        if num_devices < 1:
            raise ConfigurationError("--num-devices must be at least 1")
        options = predictor_options(config)
        configure = getattr(predictor, "configure", None)
        if callable(configure) and not is_legacy(predictor):
            configure(num_devices, options)
        executor = plugins.executor(config.executor)(num_devices, dict(config.executor_options))
        group = WorkerGroup(
            executor,
            _settings(
                GroupSettings,
                config,
                world_size=num_devices,
                predictor=config.model or None,
                predictor_pickle=predictor_pickle,
                plugins=plugins.module_names(),
                options=options,
            ),
        )
        store = OutputStore(config.output_dir)
        journal = JobJournal(store.jobs_dir / "jobs.sqlite3")
        service = JobService(group, store, plugins, predictor, schema, _settings(ServiceSettings, config), journal)
        recovered = service.recover()
        if recovered:
            log.info("recovered %d job record(s) from %s", recovered, journal.path)
        journal.start()
        sock = _bind(config.host, config.port)
        self.port = sock.getsockname()[1]
        http = _HttpServer(
            uvicorn.Config(
                create_app(
                    service,
                    api_key=config.api_key or os.environ.get(API_KEY_ENV) or None,
                    max_body_bytes=config.max_body_bytes,
                ),
                log_level=config.log_level.lower(),
                access_log=False,
                lifespan="off",
                timeout_graceful_shutdown=5,
            )
        )
        await group.open()
        http_task = asyncio.create_task(http.serve(sockets=[sock]))
        log.info("para-attn-server listening on http://%s:%d", config.host, self.port)
        try:
            start_task = asyncio.create_task(service.start())
            await asyncio.wait({start_task, http_task}, return_when=asyncio.FIRST_COMPLETED)
            if not start_task.done():  # a signal stopped us during setup
                start_task.cancel()
                return
            start_task.result()  # raises SetupError
            log.info("ready: %d rank(s) of %r", num_devices, config.model or type(predictor).__name__)
            http.on_signal = lambda: asyncio.ensure_future(_drain_then_exit(service, http))
            await http_task
        finally:
            http.should_exit = True
            if not http_task.done():
                await http_task
            await group.stop()
            await asyncio.to_thread(store.flush)
            await journal.close()


_T = TypeVar("_T")


def _settings(cls: type[_T], config: ServerConfig, **values: Any) -> _T:
    """A layer's settings dataclass, taking each field it shares with the config."""
    shared = {f.name: getattr(config, f.name) for f in fields(cls) if hasattr(config, f.name)}  # type: ignore[arg-type]
    return cls(**{**shared, **values})


MODEL_PATH_ENV = "PARA_ATTN_MODEL_PATH"
API_KEY_ENV = "PARA_ATTN_SERVER_API_KEY"


def predictor_options(config: ServerConfig) -> dict[str, str]:
    """``--option`` values, with ``--model-path`` (or its environment variable) as
    ``model_path``."""
    options = dict(config.options)
    model_path = config.model_path or os.environ.get(MODEL_PATH_ENV)
    if model_path:
        options.setdefault("model_path", model_path)
    return options


async def _drain_then_exit(service: JobService, http: uvicorn.Server) -> None:
    log.info("draining: no new jobs; finishing the running one")
    await service.drain()
    http.should_exit = True


class _HttpServer(uvicorn.Server):
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


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise ConfigurationError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    sock.listen(2048)
    sock.set_inheritable(False)
    os.set_blocking(sock.fileno(), False)
    return sock
