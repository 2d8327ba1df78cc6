"""The ``metrics`` plugin: Prometheus metrics an operator can alert on, at ``/metrics``.

Every app gets its own ``prometheus_client.CollectorRegistry``, so several apps in one
process (tests, an embedding program) never share or clash on a metric. What it holds:

- the job service's counters and gauges, read from ``Jobs.metrics()`` at each scrape:
  jobs submitted, rejected (queue full) and finished by state; jobs waiting and running
  (also as ``num_requests_waiting`` / ``num_requests_running``, the names load-balancing
  routers read), waiting by priority, pipeline calls by batch size (a histogram); per
  worker group (labels ``group``, ``host``: the host its ranks run on, and ``model``: the
  served model whose jobs it runs): ready, ranks up, ranks, restarts, and its adapter (LoRA)
  cache: adapters loaded, loads, evictions, and load seconds (a histogram);
- per served model (label ``model``; one series each on a server of one):
  ``para_attn_model_queue_length``, ``para_attn_model_jobs_submitted_total`` and
  ``para_attn_model_jobs_finished_total{state}``;
- per host (label ``host``: the server's own, in state ``local``, and each host that
  joined, kept after it left or was lost): ``para_attn_host_up`` (1 while it takes new
  jobs: local or serving), ``para_attn_host_state{state}`` (1 for its state, 0 for every
  other one, so an alert can name a state), ``para_attn_host_groups`` (its groups serving
  now), ``para_attn_host_devices``, ``para_attn_host_runs_total`` (job runs started on its
  groups) and ``para_attn_host_last_seen_seconds`` (a joined host only: since it last
  asked for its orders);
- histograms fed by a job listener (``Jobs.add_listener``): queue wait, run time by
  final state, runs per job (``para_attn_job_attempts``), and time between a job's
  progress steps; requeues (a counter) come with the service's counters;
- the server process's allocators: ``para_attn_heap_bytes{part}`` (the C allocator's bytes
  in use, free but held, and mapped on their own) and ``para_attn_python_blocks`` (Python's
  objects, near enough): flat in steady state (the soak benchmark and its test read them);
- HTTP request metrics (``para_attn_http_*``: count, duration, in progress, 5xx) from
  Litestar's Prometheus middleware, by method, route template and status.

Litestar's ``PrometheusMiddleware`` keeps its metrics in a class attribute registered in
prometheus_client's global registry (and ``PrometheusController`` serves that global
registry): two apps in one process would share the counts, or clash. ``AppPrometheusMiddleware``
keeps them in the app's own registry instead, and the route here serves that registry.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator, Callable, Collection, Iterator, Sequence
from dataclasses import dataclass, field
from itertools import accumulate
from typing import Any, cast

from litestar import Litestar, Response, get
from litestar.config.app import AppConfig
from litestar.plugins import InitPluginProtocol
from litestar.plugins.prometheus import PrometheusConfig, PrometheusMiddleware
from litestar.types import ASGIApp
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.metrics import MetricWrapperBase

from para_attn_server.plugin import (
    ADAPTER_LOAD_BUCKETS,
    GroupStatus,
    HostStatus,
    JobRecord,
    Jobs,
    JobState,
    ModelStatus,
    heap,
    hookimpl,
)

HTTP_PREFIX = "para_attn_http"
QUEUE_WAIT_BUCKETS = (0.01, 0.05, 0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800)
DURATION_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)
ATTEMPT_BUCKETS = (1, 2, 3, 4, 5, 10)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
STEP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
GROUP_LABELS = ["group", "host", "model"]
HOST_STATES = ("local", "serving", "draining", "left", "lost", "refused")  # HostStatus.state
SERVING_STATES = frozenset({"local", "serving"})


@hookimpl
def register_routes(register: Callable[[Any], None], jobs: Jobs) -> None:
    register(MetricsPlugin(jobs))


class MetricsPlugin(InitPluginProtocol):
    """One app's metrics: its registry, the route that serves it, the HTTP middleware, and
    the job listener (added while the app runs)."""

    def __init__(self, jobs: Jobs) -> None:
        self.jobs = jobs
        self.registry = CollectorRegistry()
        self.job_metrics = JobMetrics(jobs, self.registry)
        self.http = AppPrometheusConfig(registry=self.registry, prefix=HTTP_PREFIX, app_name="para-attn-server")

    def on_app_init(self, app_config: AppConfig) -> AppConfig:
        registry = self.registry

        @get(
            "/metrics",
            summary="Prometheus metrics",
            description="Prometheus text format: jobs by state, queue, worker groups, job and HTTP timings.",
            response_description="The metrics, in Prometheus text format",
            media_type=CONTENT_TYPE_LATEST,
            tags=["health"],
        )
        async def metrics() -> Response[bytes]:
            return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

        app_config.route_handlers.append(metrics)
        # Outermost, so answers from the other middleware (401 from the API key) count too.
        app_config.middleware.insert(0, self.http.middleware)
        app_config.lifespan.append(self.listening)
        return app_config

    @contextlib.asynccontextmanager
    async def listening(self, app: Litestar) -> AsyncIterator[None]:
        remove = self.jobs.add_listener(self.job_metrics.observe)
        try:
            yield
        finally:
            remove()


class JobMetrics:
    """The job service's metrics: histograms fed by its events, and a collector that reads
    its counters and gauges at each scrape (so they cannot drift from what it reports)."""

    def __init__(self, jobs: Jobs, registry: CollectorRegistry) -> None:
        self.queue_wait = Histogram(
            "para_attn_queue_wait_seconds",
            "Seconds from submit to the job starting on a worker group.",
            buckets=QUEUE_WAIT_BUCKETS,
            registry=registry,
        )
        self.duration = Histogram(
            "para_attn_job_duration_seconds",
            "Seconds a job ran (from start to end), by final state; jobs cancelled while queued are not counted.",
            ["state"],
            buckets=DURATION_BUCKETS,
            registry=registry,
        )
        self.step_time = Histogram(
            "para_attn_step_seconds",
            "Seconds between two progress steps of a job.",
            buckets=STEP_BUCKETS,
            registry=registry,
        )
        self.attempts = Histogram(
            "para_attn_job_attempts",
            "Runs a job took (more than 1: a lost rank or host cut a run short), jobs that ran only.",
            buckets=ATTEMPT_BUCKETS,
            registry=registry,
        )
        self._last_step: dict[str, float] = {}  # job id -> when its last progress step came
        registry.register(_ServiceCollector(jobs))
        registry.register(_HeapCollector())
        ProcessCollector(registry=registry)  # process_resident_memory_bytes, open fds, CPU seconds

    def observe(self, kind: str, record: JobRecord) -> None:
        if kind == "progress":
            now = time.monotonic()
            last = self._last_step.get(record.id)
            if last is not None:
                self.step_time.observe(now - last)
            self._last_step[record.id] = now
        elif kind == "state" and record.state is JobState.RUNNING and record.started_at is not None:
            self.queue_wait.observe(max(0.0, record.started_at - record.created_at))
        elif kind == "state" and record.terminal:
            self._last_step.pop(record.id, None)
            if record.started_at is not None and record.finished_at is not None:
                took = max(0.0, record.finished_at - record.started_at)
                self.duration.labels(record.state.value).observe(took)
            if runs := record.runs():
                self.attempts.observe(len(runs))


class _HeapCollector:
    """The server process's allocators at the scrape: flat on a server in steady state, so a
    leak shows here first (``process_resident_memory_bytes`` mixes in what the kernel maps)."""

    def collect(self) -> Iterator[Metric]:
        if (now := heap()) is None:  # not glibc
            return
        parts = GaugeMetricFamily(
            "para_attn_heap_bytes", "The C allocator's bytes: in_use (mapped included), free (held), mapped.",
            labels=["part"],
        )  # fmt: skip
        for part in ("in_use", "free", "mapped"):
            parts.add_metric([part], getattr(now, part))
        yield parts
        yield GaugeMetricFamily("para_attn_python_blocks", "Python's small-object blocks in use.", now.python_blocks)


class _ServiceCollector:
    """The service's own counters and gauges, as they are at the scrape."""

    def __init__(self, jobs: Jobs) -> None:
        self.jobs = jobs

    def collect(self) -> Iterator[Metric]:
        m = self.jobs.metrics()
        yield CounterMetricFamily("para_attn_jobs_submitted", "Jobs accepted into the queue.", value=m.submitted)
        yield CounterMetricFamily(
            "para_attn_jobs_rejected", "Jobs refused because the queue was full.", value=m.rejected_queue_full
        )
        finished = CounterMetricFamily("para_attn_jobs_finished", "Jobs that ended, by final state.", labels=["state"])
        for state, count in sorted(m.finished.items()):
            finished.add_metric([state], count)
        yield finished
        yield CounterMetricFamily(
            "para_attn_job_requeues", "Runs cut short by a lost rank or host, queued again.", value=m.requeued
        )
        yield GaugeMetricFamily("para_attn_queue_length", "Jobs waiting in the queue.", value=m.queue_length)
        by_priority = GaugeMetricFamily(
            "para_attn_queue_length_by_priority", "Jobs waiting in the queue, by priority.", labels=["priority"]
        )
        for priority, count in sorted(m.queued_by_priority.items()):
            by_priority.add_metric([str(priority)], count)
        yield by_priority
        yield _batch_sizes(m.batch_sizes)
        yield GaugeMetricFamily("para_attn_jobs_running", "Jobs running on a worker group.", value=m.running)
        yield GaugeMetricFamily(
            "para_attn_output_writes_pending", "Output copies and deletions not yet on disk.",
            value=m.output_writes_pending,
        )  # fmt: skip
        yield GaugeMetricFamily(
            "para_attn_output_memory_bytes", "Outputs held in memory to serve.", value=m.output_memory_bytes
        )
        yield CounterMetricFamily(
            "para_attn_idle_collections", "Python's full collections once the server was quiet.",
            value=m.idle_collections,
        )  # fmt: skip
        yield GaugeMetricFamily(
            "para_attn_python_blocks_idle", "Python's blocks right after the last idle collection.",
            value=m.python_blocks_idle,
        )  # fmt: skip
        yield GaugeMetricFamily(
            "para_attn_idle_collection_seconds", "How long the last idle collection took.",
            value=m.idle_collection_seconds,
        )  # fmt: skip
        yield GaugeMetricFamily("num_requests_waiting", "Jobs waiting (the name routers read).", value=m.queue_length)
        yield GaugeMetricFamily("num_requests_running", "Jobs running (the name routers read).", value=m.running)
        yield from _group_metrics(m.groups)
        yield from _adapter_metrics(m.groups)
        yield from _host_metrics(m.hosts)
        yield from _model_metrics(m.models, m.finished)


def _batch_sizes(sizes: dict[int, int]) -> Metric:
    """Pipeline calls by how many jobs each ran (1: a job alone)."""
    buckets = [(str(float(bound)), sum(n for size, n in sizes.items() if size <= bound)) for bound in BATCH_BUCKETS]
    return HistogramMetricFamily(
        "para_attn_batch_size", "Jobs that shared one pipeline call (1: a job alone).",
        buckets=[*buckets, ("+Inf", sum(sizes.values()))], sum_value=sum(size * n for size, n in sizes.items()),
    )  # fmt: skip


def _group_metrics(groups: list[GroupStatus]) -> Iterator[Metric]:
    """Each worker group's health, labelled with the host its ranks run on."""
    ready = GaugeMetricFamily(
        "para_attn_group_ready", "1 when every rank of the group finished setup.", labels=GROUP_LABELS
    )
    up = GaugeMetricFamily(
        "para_attn_group_ranks_up", "Ranks of the group connected to the server.", labels=GROUP_LABELS
    )
    ranks = GaugeMetricFamily("para_attn_group_ranks", "Ranks the group has.", labels=GROUP_LABELS)
    restarts = CounterMetricFamily(
        "para_attn_group_restarts", "Worker group restarts after a fault.", labels=GROUP_LABELS
    )
    for group in groups:
        label = [str(group.group), group.host, group.model]
        ready.add_metric(label, int(group.ready))
        up.add_metric(label, sum(rank.state != "starting" for rank in group.ranks))
        ranks.add_metric(label, len(group.ranks))
        restarts.add_metric(label, group.restarts)
    yield from (ready, up, ranks, restarts)


def _host_metrics(hosts: Sequence[HostStatus]) -> Iterator[Metric]:
    """Each host the server knows: the server's own and those that joined (a host that left
    or was lost keeps its series, with up 0, so its runs_total does not vanish)."""
    up = GaugeMetricFamily("para_attn_host_up", "1 while the host takes new jobs (local or serving).", labels=["host"])
    state = GaugeMetricFamily(
        "para_attn_host_state", "1 for the host's state, 0 for the other states.", labels=["host", "state"]
    )
    groups = GaugeMetricFamily("para_attn_host_groups", "The host's worker groups serving now.", labels=["host"])
    devices = GaugeMetricFamily("para_attn_host_devices", "Devices the host brought.", labels=["host"])
    runs = CounterMetricFamily("para_attn_host_runs", "Job runs started on the host's groups.", labels=["host"])
    seen = GaugeMetricFamily(
        "para_attn_host_last_seen_seconds", "Seconds since a joined host last asked for its orders.", labels=["host"]
    )
    for host in hosts:
        name = [host.name]
        up.add_metric(name, int(host.state in SERVING_STATES))
        # Every state, not only the current one: a series that vanishes cannot be alerted on.
        known = HOST_STATES if host.state in HOST_STATES else (*HOST_STATES, host.state)
        for each in known:
            state.add_metric([host.name, each], int(each == host.state))
        groups.add_metric(name, len(host.groups))
        devices.add_metric(name, host.devices)
        runs.add_metric(name, host.runs)
        if host.last_seen_s is not None:
            seen.add_metric(name, host.last_seen_s)
    yield from (up, state, groups, devices, runs, seen)


def _model_metrics(models: Sequence[ModelStatus], finished_states: Collection[str]) -> Iterator[Metric]:
    """Each served model's queue and jobs. Every final state the service counts has a
    series per model, 0 until one ends so: a series that appears late cannot be alerted on."""
    queued = GaugeMetricFamily("para_attn_model_queue_length", "Jobs of the model waiting in the queue.",
                               labels=["model"])  # fmt: skip
    submitted = CounterMetricFamily(
        "para_attn_model_jobs_submitted", "Jobs of the model accepted into the queue.", labels=["model"]
    )
    finished = CounterMetricFamily(
        "para_attn_model_jobs_finished", "Jobs of the model that ended, by final state.", labels=["model", "state"]
    )
    for model in models:
        queued.add_metric([model.name], model.queue_length)
        submitted.add_metric([model.name], model.submitted)
        for state in sorted({*finished_states, *model.finished}):
            finished.add_metric([model.name, state], model.finished.get(state, 0))
    yield from (queued, submitted, finished)


def _adapter_metrics(groups: list[GroupStatus]) -> Iterator[Metric]:
    """Each group's adapter (LoRA) cache, as its ranks reported it."""
    loaded = GaugeMetricFamily("para_attn_adapters_loaded", "Adapters the group holds loaded.", labels=GROUP_LABELS)
    loads = CounterMetricFamily("para_attn_adapter_loads", "Adapters the group loaded.", labels=GROUP_LABELS)
    evictions = CounterMetricFamily(
        "para_attn_adapter_evictions", "Adapters the group evicted to load others.", labels=GROUP_LABELS
    )
    seconds = HistogramMetricFamily(
        "para_attn_adapter_load_seconds", "Seconds the group took to load an adapter.", labels=GROUP_LABELS
    )
    for group in groups:
        label, stats = [str(group.group), group.host, group.model], group.adapters
        loaded.add_metric(label, len(stats.loaded))
        loads.add_metric(label, stats.loads)
        evictions.add_metric(label, stats.evictions)
        bounds = [*(str(float(bound)) for bound in ADAPTER_LOAD_BUCKETS), "+Inf"]
        seconds.add_metric(label, list(zip(bounds, accumulate(stats.load_seconds_counts), strict=True)),
                           sum_value=stats.load_seconds_sum)  # fmt: skip
    yield from (loaded, loads, evictions, seconds)


@dataclass
class AppPrometheusConfig(PrometheusConfig):
    """Litestar's Prometheus configuration, with the app's own registry."""

    registry: CollectorRegistry = field(default_factory=CollectorRegistry)
    middleware_class: type[PrometheusMiddleware] = field(default_factory=lambda: AppPrometheusMiddleware)
    group_path: bool = True  # route templates, not paths: one series per route, whatever the job id
    # The app's middleware instances (Litestar makes one per route) share these.
    metrics: dict[str, MetricWrapperBase] = field(default_factory=dict)


class AppPrometheusMiddleware(PrometheusMiddleware):
    """Litestar's Prometheus middleware keeping its metrics in the app's registry (see the
    module docstring)."""

    def __init__(self, app: ASGIApp, config: AppPrometheusConfig) -> None:
        super().__init__(app, config)
        self._app_config = config

    def _metric(self, kind: type[MetricWrapperBase], name: str, text: str, labels: dict[str, Any]) -> Any:
        config = self._app_config
        metric = config.metrics.get(name)
        if metric is None:
            options: dict[str, Any] = {"registry": config.registry}
            if kind is Histogram:
                options.update(self._kwargs)
            elif kind is Gauge:
                options["multiprocess_mode"] = "livesum"
            metric = config.metrics[name] = kind(f"{config.prefix}_{name}", text, [*labels], **options)
        return metric

    def request_count(self, labels: dict[str, str | int | float]) -> Counter:
        return cast("Counter", self._metric(Counter, "requests_total", "Total requests", labels))

    def request_time(self, labels: dict[str, str | int | float]) -> Histogram:
        return cast("Histogram", self._metric(Histogram, "request_duration_seconds", "Request duration", labels))

    def requests_in_progress(self, labels: dict[str, str | int | float]) -> Gauge:
        return cast("Gauge", self._metric(Gauge, "requests_in_progress", "Requests in progress", labels))

    def requests_error_count(self, labels: dict[str, str | int | float]) -> Counter:
        return cast("Counter", self._metric(Counter, "requests_error_total", "Requests answered 5xx", labels))
