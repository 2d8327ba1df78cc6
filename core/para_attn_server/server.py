"""``ParaAttentionServer``: wires plugins, worker groups, job service and HTTP together.

``ParaAttentionServer(predictor, host, port, num_devices).run()`` is the original server's
Python entry and still works; every other setting is a keyword with a safe default.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import socket
from pathlib import Path
from typing import Any

import msgspec
import uvicorn

from para_attn_server import allocator, served
from para_attn_server import settings as settings_tree
from para_attn_server.adapters import Adapters
from para_attn_server.cluster.auth import hello_proof, server_token
from para_attn_server.cluster.fleet import Fleet
from para_attn_server.cluster.rendezvous import ClusterHost
from para_attn_server.cluster.spec import DEFAULT_RDZV_PORT, WILDCARDS, installed_plugins, join_endpoint
from para_attn_server.engine.inputs import Fetch
from para_attn_server.engine.models import ServedModel
from para_attn_server.engine.service import JobService
from para_attn_server.errors import ConfigurationError
from para_attn_server.http import create_app
from para_attn_server.http.fetch import AllowedHosts, fetch
from para_attn_server.http.listener import HttpServer, bind
from para_attn_server.http.listener import config as listener_config
from para_attn_server.logs import configure_logging, log_jobs
from para_attn_server.options import configure
from para_attn_server.plugin.manager import Plugins
from para_attn_server.predictor import Predictor
from para_attn_server.schema import InputSchema
from para_attn_server.served import ModelPlan
from para_attn_server.settings import Settings
from para_attn_server.storage.dirlock import OutputDirLock
from para_attn_server.storage.journal import JobJournal
from para_attn_server.storage.outputs import JOBS_DIR, OutputStore
from para_attn_server.views import HostStatus
from para_attn_server.workers.executor import Executor, RankSpec, Rendezvous
from para_attn_server.workers.group import WorkerGroup

log = logging.getLogger("para_attn_server")


def default_num_devices() -> int:
    import torch

    return torch.cuda.device_count() or 1


class ParaAttentionServer:
    """The server. The original's four positional arguments work as before; every other
    setting (``settings.py``) is a keyword: ``output_dir=...``, ``max_queue=...``."""

    def __init__(
        self,
        predictor: object | str | None = None,
        host: str = "127.0.0.1",
        port: int = 5000,
        num_devices: int | None = None,
        log_level: int | str = "INFO",
        **settings: Any,
    ) -> None:
        level = logging.getLevelName(log_level) if isinstance(log_level, int) else log_level
        values = {"host": host, "port": port, "num_devices": num_devices, "log_level": level, **settings}
        if isinstance(predictor, str):
            values["model"] = predictor
        # Loaded once: their sections shape the settings, and the server runs with them.
        self.plugins = Plugins.load(values.get("plugins", []))
        self.predictor = predictor
        self.settings = settings_tree.build(values, self.plugins.settings_sections())
        self.port: int | None = None  # the bound port, once listening

    @classmethod
    def from_settings(cls, settings: Settings, plugins: Plugins | None = None) -> ParaAttentionServer:
        """A server of ``settings``, with the ``plugins`` they were built with (when None,
        those ``settings.model.plugins`` name, loaded now)."""
        server = cls.__new__(cls)
        server.predictor, server.settings, server.port = settings.model.model, settings, None
        server.plugins = Plugins.load(settings.model.plugins) if plugins is None else plugins
        return server

    def run(self) -> None:
        """Serve until SIGTERM/SIGINT (then drain and return). Raises ``SetupError`` when
        the ranks fail their first setup, ``ConfigurationError`` for a bad setting."""
        configure_logging(self.settings.log_level, self.settings.log_format)
        allocator.tune()  # before the loop's threads: flat memory over millions of jobs
        try:
            import uvloop

            runner = asyncio.Runner(loop_factory=uvloop.new_event_loop)
        except ImportError:
            runner = asyncio.Runner()
        with runner:
            runner.run(self.serve())

    async def serve(self) -> None:
        settings = self.settings
        # The port, then the output directory: a second server on either stops here, having
        # touched neither the first one's journal nor its outputs.
        sock = bind(settings.http.host, settings.http.port)
        self.port = sock.getsockname()[1]
        lock = OutputDirLock(settings.jobs.output_dir)
        lock.acquire()
        try:
            await self._serve(sock)
        finally:
            lock.release()

    async def _serve(self, sock: socket.socket) -> None:
        settings, plugins = self.settings, self.plugins
        settings_tree.check_unique(plugins.settings_sections())
        instance = None if self.predictor is None or isinstance(self.predictor, str) else self.predictor
        plans = served.plan(settings, plugins, instance)
        fetch_input = input_fetch(settings)  # a bad --input-allow-host fails before any rank starts
        adapters = _adapters(settings, plans[0].predictor)  # so does a missing --lora path
        cluster = self._cluster(plugins)
        groups, spec, schemas = self._all_groups(plugins, plans, cluster, adapters)
        if cluster is not None:
            cluster.open()
            cluster.attach(groups[0])
        store = OutputStore(settings.jobs.output_dir)
        journal = JobJournal(store.jobs_dir / "jobs.sqlite3")
        pairs = zip(plans[1:], schemas[1:], strict=True)
        more = [ServedModel(plan.name, plan.predictor, schema) for plan, schema in pairs]
        first = plans[0].predictor
        service = JobService(groups, store, plugins, first, schemas[0], settings.jobs, journal, fetch_input, more)
        log_jobs(service)
        fleet = self._fleet(plugins, service, spec)
        if groups:
            name = groups[0].host
            service.hosts[name] = HostStatus(name, "local", [], len(groups) * spec.world_size, spec.world_size)
        if adapters is not None:  # before recovery: a job accepted for an adapter added at run time
            adapters.restore(store.jobs_dir / "loras.json")
        recovered = service.recover()
        if recovered:
            log.info("recovered %d job record(s) from %s", recovered, journal.path)
        journal.start()
        app = create_app(
            service,
            settings,
            api_key=settings.http.key(),
            max_body_bytes=settings.http.max_body_bytes,
            cluster=cluster,
            fleet=fleet,
        )
        http = HttpServer(listener_config(app, settings.http, settings.log_level))
        await asyncio.gather(*(group.open() for group in groups))
        http_task = asyncio.create_task(http.serve(sockets=[sock]))
        log.info("para-attn-server listening on http://%s:%d", settings.http.host, self.port)
        if cluster is not None:
            hosts = settings.group.nnodes - 1
            log.info(
                "waiting for %d more host(s); on each run: %s",
                hosts,
                self._join_command(f"--num-devices {cluster.nproc_per_node}"),
            )
        collector: asyncio.Task[None] | None = None
        try:
            start_task = asyncio.create_task(service.start())
            await asyncio.wait({start_task, http_task}, return_when=asyncio.FIRST_COMPLETED)
            if not start_task.done():  # a signal stopped us during setup
                start_task.cancel()
                return
            start_task.result()  # raises SetupError
            if adapters is not None:  # ConfigurationError: an adapter that cannot load into this model
                adapters.fits(next((group.adapter_fit for group in groups if group.adapter_fit), None))
            self._ready(service, groups, fleet, spec)
            http.on_signal = lambda: asyncio.ensure_future(_drain_then_exit(service, http))
            allocator.settle()
            collector = asyncio.create_task(service.collector.run())
            await http_task
        finally:
            if collector is not None:
                collector.cancel()
            http.should_exit = True
            if not http_task.done():
                await http_task
            await asyncio.gather(*(group.stop() for group in groups))
            await asyncio.to_thread(store.flush)
            await journal.close()
            if cluster is not None:
                cluster.close()
            if fleet is not None:
                await fleet.close()

    def _ready(self, service: JobService, groups: list[WorkerGroup], fleet: Fleet | None, spec: RankSpec) -> None:
        """Say that each model is ready, with its ranks; open the fleet to joining hosts."""
        for model in service.models.values():
            own = [group for group in groups if group.model == model.name]
            ranks = sum(group.world_size for group in own)
            log.info("ready: %d rank(s) of %r%s%s", ranks, model.name, _group_shape(own), _layout(model.layout))
        if fleet is not None:
            fleet.start()
            command = self._join_command(f"--group-size {spec.world_size}")
            log.info("hosts may join with their own groups; on each run: %s", command)

    def _cluster(self, plugins: Plugins) -> ClusterHost | None:
        """With ``--nnodes`` > 1: the rendezvous and join route for the other hosts."""
        group = self.settings.group
        if group.nnodes == 1:
            return None
        endpoint = group.rdzv_endpoint or join_endpoint(group.control_host, DEFAULT_RDZV_PORT)
        return ClusterHost(endpoint, self._join_token[0], installed_plugins(plugins), _num_devices(self.settings))

    @functools.cached_property
    def _join_token(self) -> tuple[str, Path | None]:
        """The join token and the file it is in: given, or generated once (``auth.server_token``)."""
        return server_token(self.settings.http, Path(self.settings.jobs.output_dir) / JOBS_DIR)

    def _join_command(self, tail: str) -> str:
        """The command a joining host runs: never with the token itself (ps would show it)."""
        host = socket.gethostname() if self.settings.http.host in WILDCARDS else self.settings.http.host
        path = self._join_token[1]
        token = f"--token-file {path} " if path else ""
        also = "" if path else " (with the join token in $PARA_ATTN_SERVER_JOIN_TOKEN, or --token-file FILE)"
        return f"para-attn-server join http://{host}:{self.port} {token}{tail}{also}"

    def _spans_hosts(self, cluster: ClusterHost) -> dict[str, Any]:
        """The RankSpec fields of a group across hosts."""
        timeout = max(1, int(self.settings.group.setup_timeout))
        rendezvous = Rendezvous(
            endpoint=cluster.endpoint, run_id=cluster.run_id, nnodes=self.settings.group.nnodes, join_timeout=timeout
        )
        return {"rendezvous": rendezvous, "join_token": hello_proof(cluster.join_token)}  # ranks' hellos: the proof

    def _all_groups(
        self, plugins: Plugins, plans: list[ModelPlan], cluster: ClusterHost | None, adapters: Adapters | None
    ) -> tuple[list[WorkerGroup], RankSpec, list[InputSchema]]:
        """Every model's groups on this host in order (none with ``--num-devices 0``), the spec
        the first model's groups start from (a joined host's too), and each model's schema."""
        fields = plugins.request_fields(self.settings)
        groups: list[WorkerGroup] = []
        specs, schemas = [], []
        for number, plan in enumerate(plans):
            offset = sum(group.world_size for group in groups)  # each model on devices of its own
            own, spec, defaults = self._groups(plugins, plan, cluster if number == 0 else None, len(groups), offset)
            # Only the first model takes --lora and /v1/loras; another that could apply adapters offers none.
            offered = adapters if number == 0 else _adapters(self.settings, plan.predictor, none=True)
            schemas.append(InputSchema(plan.predictor, fields, offered, defaults, plan.name))  # refuses a clash
            groups += own
            specs.append(spec)
        return groups, specs[0], schemas

    def _groups(
        self, plugins: Plugins, plan: ModelPlan, cluster: ClusterHost | None, first: int, device_offset: int
    ) -> tuple[list[WorkerGroup], RankSpec, dict[str, Any]]:
        """One model's groups on this host, the spec they start from, and its request defaults."""
        settings = self.settings
        nnodes = settings.group.nnodes
        if plan.num_devices is not None:  # a [[models]] table
            per_host, size, flags = plan.num_devices, plan.group_size or plan.num_devices, f"[[models]] {plan.name!r}: "
        else:  # the cluster already counted this host's devices (counting imports torch)
            per_host = cluster.nproc_per_node if cluster else _num_devices(settings)
            size, flags = settings.group.group_size or per_host * nnodes or 1, ""
        num_devices = per_host * nnodes
        across = f" x --nnodes {nnodes}" if nnodes > 1 else ""
        if num_devices % size:
            raise ConfigurationError(
                f"{flags}--num-devices {per_host}{across} is not a multiple of --group-size {size}"
            )
        executor = plugins.executor(settings.group.executor)
        if nnodes > 1 and not executor.multi_node:
            raise ConfigurationError(
                f"--executor {settings.group.executor} starts ranks on this host only: --nnodes {nnodes} needs "
                "--executor torchrun"
            )
        if nnodes > 1 and size != num_devices:
            raise ConfigurationError(
                f"--group-size {size}: with --nnodes {nnodes} one group spans the hosts, so it must be all "
                f"{num_devices} ranks (--num-devices {per_host}{across})"
            )
        executor_options = executor.parse_options(settings.group.executor_options)
        defaults = configure(plan.predictor, size, plan.options)
        spec = RankSpec(
            world_size=size,
            control_host=settings.group.control_host,
            control_port=0,
            token="",
            generation=0,
            predictor=plan.spec,
            predictor_pickle=plan.pickled,
            plugins=plugins.module_names(),
            options=plan.options,
            settings=settings.rank,
            log_level=settings.log_level,
            log_format=settings.log_format,
            model_name=plan.name,
            **(self._spans_hosts(cluster) if cluster else {}),
        )
        groups = []
        for local in range(num_devices // size):
            devices = plan.devices[local * size : (local + 1) * size] if plan.devices else None
            ranks = msgspec.structs.replace(
                spec, group=first + local, device_offset=device_offset + local * size, devices=devices
            )
            groups.append(WorkerGroup(first + local, executor(size // nnodes, executor_options), settings.group, ranks))
        return groups, spec, defaults

    def _fleet(self, plugins: Plugins, service: JobService, spec: RankSpec) -> Fleet | None:
        """Hosts joining with their own groups: with a join token, or on a front (``--num-devices 0``)."""
        settings = self.settings
        given = settings.http.join_token or settings.http.join_token_file
        if settings.group.nnodes > 1 or not (given or settings.group.num_devices == 0):
            return None
        if spec.predictor is None:
            raise ConfigurationError("joined hosts run the predictor by its name or module:Class, not an object")
        token = self._join_token[0]
        spec = msgspec.structs.replace(spec, join_token=hello_proof(token), predictor_pickle=None)

        def new_group(index: int, executor: Executor, host: str, local: int) -> WorkerGroup:
            offset = local * spec.world_size
            ranks = msgspec.structs.replace(spec, group=index, device_offset=offset, node=host)
            return WorkerGroup(index, executor, settings.group, ranks, host=host)

        return Fleet(
            service, token, installed_plugins(plugins), new_group, group_size=spec.world_size,
            executor=settings.group.executor, executor_options=settings.group.executor_options,
            host_timeout=settings.group.host_timeout, drain_timeout=settings.jobs.drain_timeout,
            first_index=len(service.groups),
        )  # fmt: skip


def _num_devices(settings: Settings) -> int:
    num = settings.group.num_devices
    return default_num_devices() if num is None else num


def _group_shape(groups: list[WorkerGroup]) -> str:
    if not groups:
        return " (none here: a front for hosts that join with their groups)"
    return "" if len(groups) == 1 else f" in {len(groups)} groups of {groups[0].world_size}"


def _layout(degrees: dict[str, int]) -> str:
    return ", split " + " x ".join(f"{name}={value}" for name, value in degrees.items()) if degrees else ""


async def _drain_then_exit(service: JobService, http: uvicorn.Server) -> None:
    log.info("draining: no new jobs; finishing the running one")
    await service.drain()
    http.should_exit = True


def input_fetch(settings: Settings) -> Fetch | None:
    """How the job service fetches a picture given as a URL: from --input-allow-host only."""
    if not settings.jobs.input_allow_hosts:
        return None
    try:
        allowed = AllowedHosts(settings.jobs.input_allow_hosts)
    except ValueError as exc:
        raise ConfigurationError(str(exc)) from None

    async def fetch_input(url: str, max_bytes: int) -> bytes:
        return (await fetch(url, allowed, max_bytes))[0]

    return fetch_input


def _adapters(settings: Settings, predictor: Predictor, *, none: bool = False) -> Adapters | None:
    """The adapters requests may apply (None: the predictor applies none); refuses
    ``--lora`` and ``--lora-dir`` for a predictor that cannot apply them. ``none``: an
    empty registry (a model that may apply adapters but is offered none)."""
    model = settings.model
    if none:
        return Adapters.from_settings({}, None, model.max_loras_per_request) if predictor.supports_loras else None
    adapters = Adapters.from_settings(model.loras, model.lora_dir, model.max_loras_per_request)
    if not getattr(predictor, "supports_loras", False):
        if adapters.paths:
            raise ConfigurationError(f"--lora, --lora-dir: {type(predictor).__name__} does not apply adapters")
        return None
    return adapters
