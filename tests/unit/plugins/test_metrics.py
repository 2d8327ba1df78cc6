"""The ``metrics`` plugin over a real JobService and a fake worker group: ``/metrics`` read
with prometheus_client's parser after jobs, a fault and HTTP requests, two apps in one
process keeping their own counts, and a service of two models (each group and model its
series)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from para_attn_plugins import metrics
from para_attn_server.engine.models import ServedModel
from para_attn_server.engine.registry import Job
from para_attn_server.engine.service import JobService
from para_attn_server.http import create_app
from para_attn_server.legacy import as_predictor
from para_attn_server.plugin.manager import Plugins
from para_attn_server.schema import InputSchema
from para_attn_server.settings import JobSettings
from para_attn_server.storage.outputs import OutputStore
from para_attn_server.workers.group import JobOutcome
from tests.prometheus import Scrape
from tests.unit.fakes import EchoPredictor, FakeGroup, deadline

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(60, method="thread")]


@pytest.fixture
def plugins() -> Plugins:
    return Plugins.load([metrics], autoload=False)


@contextlib.asynccontextmanager
async def serving(service: JobService, **options: str) -> AsyncIterator[httpx.AsyncClient]:
    """A client of a new app over ``service``, with the app's lifespan running."""
    app = create_app(service, **options)  # type: ignore[arg-type]
    async with app.lifespan(), httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://t") as client:
        yield client


@pytest.fixture
async def client(service: JobService) -> AsyncIterator[httpx.AsyncClient]:
    async with serving(service) as client:
        yield client


async def scrape(client: httpx.AsyncClient) -> Scrape:
    response = await client.get("/metrics")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    return Scrape(response.text)


async def submit(client: httpx.AsyncClient, **body: object) -> str:
    response = await client.post("/v1/jobs", json={"prompt": "a cat", **body})
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


async def ended(service: JobService, job_id: str) -> Job:
    job = service.jobs[job_id]
    await deadline(job.done.wait())
    return job


async def test_jobs_counted_and_the_queue_running_and_groups_shown(
    client: httpx.AsyncClient, service: JobService, group: FakeGroup
) -> None:
    done = await submit(client)
    (await group.next_run()).succeed()
    await ended(service, done)
    await submit(client)
    await group.next_run()
    await submit(client)

    m = await scrape(client)

    assert m.value("para_attn_jobs_submitted_total") == 3
    assert m.value("para_attn_jobs_finished_total", state="succeeded") == 1
    assert m.value("para_attn_jobs_finished_total", state="failed") == 0
    assert m.value("para_attn_queue_length") == m.value("num_requests_waiting") == 1
    assert m.value("para_attn_jobs_running") == m.value("num_requests_running") == 1
    assert m.value("para_attn_group_ready", group="0") == 1
    assert m.value("para_attn_group_ranks_up", group="0") == m.value("para_attn_group_ranks", group="0") == 2
    assert m.kind("para_attn_jobs_submitted") == "counter"
    assert m.kind("num_requests_waiting") == "gauge"
    # The one output is held in memory; its copy is on disk or on its way.
    assert m.value("para_attn_output_memory_bytes") == service.outputs.size > 0
    assert m.value("para_attn_output_writes_pending") in (0, 1)


async def test_histograms_rejections_and_restarts_after_jobs_and_a_fault(
    client: httpx.AsyncClient, service: JobService, group: FakeGroup
) -> None:
    first = await submit(client)
    run = await group.next_run()
    for step in (1, 2, 3):
        run.on_progress(step, 3)
    run.succeed()
    await ended(service, first)
    victim = await submit(client)
    await group.next_run()
    for _ in range(service.settings.max_queue):
        await submit(client)
    refused = await client.post("/v1/jobs", json={"prompt": "one too many"})
    group.start_called.clear()
    group.crash("rank 1 (pid 4242) killed by SIGKILL")
    await ended(service, victim)
    await deadline(group.start_called.wait())
    await group.next_run()  # the restarted group took the next job

    m = await scrape(client)

    assert refused.status_code == 429
    assert m.value("para_attn_jobs_rejected_total") == 1
    assert m.value("para_attn_group_restarts_total", group="0") == 1
    assert m.value("para_attn_queue_wait_seconds_count") == 3
    assert m.value("para_attn_job_duration_seconds_count", state="succeeded") == 1
    assert m.value("para_attn_job_duration_seconds_count", state="failed") == 1
    assert m.value("para_attn_step_seconds_count") == 2  # the time between 3 steps
    assert m.value("para_attn_step_seconds_bucket", le="+Inf") == 2
    assert m.value("para_attn_step_seconds_sum") > 0
    assert m.kind("para_attn_job_duration_seconds") == "histogram"


async def test_a_job_cancelled_in_the_queue_has_no_run_time(
    client: httpx.AsyncClient, service: JobService, group: FakeGroup
) -> None:
    await submit(client)
    await group.next_run()
    queued = await submit(client)
    await client.post(f"/v1/jobs/{queued}/cancel")

    m = await scrape(client)

    assert m.value("para_attn_jobs_finished_total", state="cancelled") == 1
    assert m.get("para_attn_job_duration_seconds_count", state="cancelled") == 0


async def test_http_requests_are_counted_by_route_template_and_status(client: httpx.AsyncClient) -> None:
    job_id = await submit(client)
    for _ in range(2):
        await client.get(f"/v1/jobs/{job_id}")
    await client.get("/v1/jobs/no-such-job")

    m = await scrape(client)

    route = "/v1/jobs/{job_id}"
    assert m.value("para_attn_http_requests_total", method="GET", path=route, status_code="200") == 2
    assert m.value("para_attn_http_requests_total", method="GET", path=route, status_code="404") == 1
    assert m.value("para_attn_http_requests_total", method="POST", path="/v1/jobs", status_code="201") == 1
    assert m.value("para_attn_http_request_duration_seconds_count", method="GET", path=route, status_code="200") == 2
    assert not [s for s in m.samples if job_id in str(s.labels)]


async def test_refusals_of_the_api_key_middleware_are_counted_too(service: JobService) -> None:
    async with serving(service, api_key="s3cret") as client:
        refused = await client.get("/server_status")
        m = Scrape((await client.get("/metrics", headers={"authorization": "Bearer s3cret"})).text)

    assert refused.status_code == 401
    assert m.value("para_attn_http_requests_total", path="/server_status", status_code="401") == 1


async def test_two_apps_in_one_process_keep_their_own_counts(
    client: httpx.AsyncClient, service: JobService, group: FakeGroup, plugins: Plugins, tmp_path: Path
) -> None:
    other_group = FakeGroup()
    predictor = as_predictor(EchoPredictor())
    other = JobService(
        [other_group], OutputStore(tmp_path / "other"), plugins, predictor, InputSchema(predictor), JobSettings()
    )
    await other.start()
    try:
        async with serving(other) as other_client:
            for _ in range(3):
                await client.get("/health/ready")
            mine = await submit(client)
            (await group.next_run()).finish(JobOutcome("failed", error="boom"))
            await ended(service, mine)
            await other_client.get("/health/ready")
            a, b = await scrape(client), await scrape(other_client)
    finally:
        await other.drain()

    assert a.value("para_attn_http_requests_total", path="/health/ready") == 3
    assert b.value("para_attn_http_requests_total", path="/health/ready") == 1
    assert (a.value("para_attn_jobs_submitted_total"), b.value("para_attn_jobs_submitted_total")) == (1, 0)
    assert a.value("para_attn_job_duration_seconds_count", state="failed") == 1
    assert b.get("para_attn_job_duration_seconds_count", state="failed") == 0
    assert a.value("para_attn_queue_wait_seconds_count") == 1
    assert b.value("para_attn_queue_wait_seconds_count") == 0


async def test_an_app_that_stopped_observes_no_more_jobs(service: JobService, group: FakeGroup) -> None:
    app = create_app(service)
    async with app.lifespan():
        pass
    job = service.submit({"prompt": "after the app stopped"})[0]
    (await group.next_run()).succeed()
    await deadline(job.done.wait())
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://t") as client:
        m = await scrape(client)

    assert m.value("para_attn_jobs_submitted_total") == 1  # read from the service at the scrape
    assert m.value("para_attn_queue_wait_seconds_count") == 0  # no listener any more


async def test_each_served_model_has_its_series_and_each_group_names_its_model(
    store: OutputStore, plugins: Plugins, settings: JobSettings
) -> None:
    first, second = FakeGroup(index=0, model="echo"), FakeGroup(index=1, model="other")
    echo, other = as_predictor(EchoPredictor()), as_predictor(EchoPredictor())
    more = [ServedModel("other", other, InputSchema(other, model="other"))]
    service = JobService([first, second], store, plugins, echo, InputSchema(echo, model="echo"), settings,
                         more_models=more)  # fmt: skip
    await service.start()
    try:
        async with serving(service) as client:
            done = await submit(client, model="other")
            (await second.next_run()).succeed()
            await ended(service, done)
            await submit(client)  # echo's: it runs
            await first.next_run()
            await submit(client)  # echo's: it waits, while other's group is idle
            m = await scrape(client)
    finally:
        settings.drain_timeout = 0
        await service.drain()

    assert m.value("para_attn_model_jobs_submitted_total", model="echo") == 2
    assert m.value("para_attn_model_jobs_submitted_total", model="other") == 1
    assert m.value("para_attn_model_jobs_finished_total", model="other", state="succeeded") == 1
    assert m.value("para_attn_model_jobs_finished_total", model="echo", state="succeeded") == 0  # there before any
    assert m.value("para_attn_model_queue_length", model="echo") == 1
    assert m.value("para_attn_model_queue_length", model="other") == 0
    assert m.value("para_attn_group_ready", group="1", model="other") == 1
    assert m.value("para_attn_group_ranks", group="0", model="echo") == 2
    assert m.value("para_attn_adapters_loaded", group="1", model="other") == 0
    assert m.kind("para_attn_model_jobs_submitted") == "counter"
    assert m.kind("para_attn_model_queue_length") == "gauge"


async def test_the_processs_allocators_are_gauges_that_follow_what_it_holds(client: httpx.AsyncClient) -> None:
    before = await scrape(client)
    held = [bytes(1 << 20) for _ in range(8)]  # 8 MiB held: in_use follows
    during = await scrape(client)
    del held

    def part(scrape: Scrape, name: str) -> float:
        return scrape.value("para_attn_heap_bytes", part=name)

    assert during.kind("para_attn_heap_bytes") == during.kind("para_attn_python_blocks") == "gauge"
    assert part(during, "in_use") - part(before, "in_use") >= 8 << 20
    assert 0 <= part(during, "mapped") <= part(during, "in_use")
    assert during.value("para_attn_python_blocks") > 0


async def test_a_quiet_server_collects_once_and_shows_its_blocks_then(
    client: httpx.AsyncClient, service: JobService, group: FakeGroup
) -> None:
    done = await submit(client)
    (await group.next_run()).succeed()
    await ended(service, done)
    service.store.flush()  # its copy on disk: nothing left waiting
    looks = [service.collector.poll(), service.collector.poll()]

    m = await scrape(client)

    assert looks == [False, True]
    assert m.value("para_attn_idle_collections_total") == 1
    assert m.value("para_attn_python_blocks_idle") == service.collector.python_blocks > 0
    assert m.value("para_attn_idle_collection_seconds") == service.collector.seconds > 0
    assert m.value("para_attn_output_writes_pending") == 0
    assert m.value("process_resident_memory_bytes") > 0
