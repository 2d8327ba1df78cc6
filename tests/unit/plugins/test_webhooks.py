"""The ``webhooks`` plugin over a real JobService and a fake worker group, delivering to a
real receiver (tests/webhook_receiver.py) that verifies every signature: which events go
out, in what order, how often, retries, refusals, and that a webhook never holds up or
fails a job."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from para_attn_plugins import webhooks
from para_attn_plugins.webhook_delivery import PROGRESS_INTERVAL
from para_attn_plugins.webhooks import AllowedHosts, Sender, WebhookSettings
from para_attn_server import ConfigurationError, settings_sources
from para_attn_server import settings as settings_tree
from para_attn_server.cli import parse
from para_attn_server.engine.service import JobService
from para_attn_server.http import create_app
from para_attn_server.legacy import as_predictor
from para_attn_server.plugin.manager import AUTOLOAD_ENV, Plugins
from para_attn_server.records import JobRecord, JobState
from para_attn_server.schema import InputSchema
from para_attn_server.settings import JobSettings, Settings
from para_attn_server.storage.outputs import OutputStore
from para_attn_server.testing import free_port
from para_attn_server.workers.group import JobOutcome
from tests.unit.fakes import EchoPredictor, FakeGroup, FakeRun, deadline
from tests.webhook_receiver import SECRET, Delivery, Receiver

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(60, method="thread")]

SECTIONS = {"webhooks": WebhookSettings}


def build(**values: Any) -> Settings:
    return settings_tree.build(values, SECTIONS)


@pytest.fixture
def logged() -> Iterator[list[logging.LogRecord]]:
    """What the plugin logs. (Not caplog: the app's logging set-up replaces the root
    logger's handlers, caplog's among them.)"""
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append  # type: ignore[method-assign]
    logger = logging.getLogger(webhooks.log.name)
    logger.addHandler(handler)
    yield records
    logger.removeHandler(handler)


@pytest.fixture
def plugins() -> Plugins:
    return Plugins.load([webhooks], autoload=False)


@pytest.fixture
def hook_settings(receiver: Receiver) -> Settings:
    return build(webhook_secret=SECRET, webhook_allow_hosts=[receiver.host], webhook_backoff=0.05)


@pytest.fixture
async def service(
    group: FakeGroup, store: OutputStore, plugins: Plugins, settings: JobSettings, hook_settings: Settings
) -> AsyncIterator[JobService]:
    predictor = as_predictor(EchoPredictor())
    schema = InputSchema(predictor, plugins.request_fields(hook_settings))
    service = JobService([group], store, plugins, predictor, schema, settings)
    await service.start()
    yield service
    settings.drain_timeout = 0
    group.stop_on_cancel = True
    await service.drain()


@contextlib.asynccontextmanager
async def serving(service: JobService, settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    """A client of a new app over ``service``; leaving it stops the app, which waits for the
    deliveries in flight (so every delivery that was due has been tried)."""
    app = create_app(service, settings)
    async with app.lifespan(), httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://t") as client:
        yield client


@pytest.fixture
async def client(service: JobService, hook_settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    async with serving(service, hook_settings) as client:
        yield client


async def submit(client: httpx.AsyncClient, **body: Any) -> str:
    response = await client.post("/v1/jobs", json={"prompt": "a cat", **body})
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


async def received(receiver: Receiver, count: int) -> list[Delivery]:
    return await asyncio.to_thread(receiver.wait, count)


async def until_done(service: JobService, job_id: str) -> None:
    await deadline(service.jobs[job_id].done.wait())


# ---- what goes out -----------------------------------------------------------------------------


async def test_start_progress_and_completed_arrive_in_order_signed_with_the_jobs_view(
    client: httpx.AsyncClient, service: JobService, group: FakeGroup, receiver: Receiver
) -> None:
    job_id = await submit(client, webhook=receiver.url)
    run = await group.next_run()
    run.on_progress(1, 2)
    await received(receiver, 2)
    run.on_progress(2, 2)  # within a second of step 1: held, then sent before completed
    run.succeed()
    await until_done(service, job_id)

    deliveries = await received(receiver, 4)
    view = (await client.get(f"/v1/jobs/{job_id}")).json()

    assert [(d.event, d.job["state"], d.job.get("step")) for d in deliveries] == [
        ("start", "running", None),
        ("progress", "running", 1),
        ("progress", "running", 2),
        ("completed", "succeeded", 2),
    ]
    assert deliveries[-1].job == view
    assert all(d.job["id"] == job_id for d in deliveries)
    assert len({d.headers["Webhook-Id"] for d in deliveries}) == 4
    assert deliveries[0].headers["Content-Type"] == "application/json"
    assert deliveries[0].headers["User-Agent"].startswith("para-attn-server/")


async def test_progress_goes_out_at_most_once_a_second_and_the_last_step_is_kept(
    client: httpx.AsyncClient, service: JobService, group: FakeGroup, receiver: Receiver
) -> None:
    job_id = await submit(client, webhook=receiver.url, webhook_events_filter=["progress"])
    run = await group.next_run()
    for step in range(1, 11):  # a burst: only the latest step waiting is sent
        run.on_progress(step, 12)
    await received(receiver, 1)
    run.on_progress(11, 12)  # held until a second after the one before
    first, later = await received(receiver, 2)
    run.on_progress(12, 12)  # held too, but the job ends: sent at once, before completed
    run.succeed()
    await until_done(service, job_id)

    deliveries = await received(receiver, 3)

    assert [d.job["step"] for d in deliveries] == [10, 11, 12]
    assert later.at - first.at >= 0.9  # a second apart, less the jitter of the loopback
    assert {d.event for d in deliveries} == {"progress"}


async def test_progress_is_paced_from_the_end_of_a_delivery_so_a_slow_first_one_brings_none_closer(
    receiver: Receiver,
) -> None:
    """The first delivery resolves the name (slow on a loaded machine; half a second here):
    the next progress still arrives a whole interval after the first did."""
    host = receiver.host.rsplit(":", 1)[0]

    async def slow_once(name: str, port: int) -> list[str]:
        if not asked:
            await asyncio.sleep(0.5)
        asked.append(name)
        return [host]

    asked: list[str] = []
    sender = Sender(
        WebhookSettings(webhook_secret=SECRET, webhook_allow_hosts=[receiver.host]), SECRET, resolve=slow_once
    )
    record = JobRecord(id=str(uuid.uuid4()), inputs={"webhook": receiver.url, "webhook_events_filter": ["progress"]},
                       fingerprint=b"", created_at=time.time(), state=JobState.RUNNING)  # fmt: skip
    sender.on_event("progress", record.evolve(step=1, total=2))
    first, *_ = await received(receiver, 1)
    sender.on_event("progress", record.evolve(step=2, total=2))
    _, later = await received(receiver, 2)  # the job goes on: its end would send it at once
    await sender.close()

    assert [later.job["step"], asked] == [2, [host]]
    assert later.at - first.at >= PROGRESS_INTERVAL


@pytest.mark.parametrize(
    ("events", "expected"),
    [
        (["completed"], ["completed"]),
        (["start", "completed"], ["start", "completed"]),
        (["start"], ["start"]),
        ([], []),
    ],
)
async def test_the_events_filter_picks_what_is_sent(
    service: JobService,
    group: FakeGroup,
    receiver: Receiver,
    hook_settings: Settings,
    events: list[str],
    expected: list[str],
) -> None:
    async with serving(service, hook_settings) as client:
        job_id = await submit(client, webhook=receiver.url, webhook_events_filter=events)
        run = await group.next_run()
        run.on_progress(1, 1)
        run.succeed()
        await until_done(service, job_id)

    assert [d.event for d in receiver.deliveries] == expected


async def test_cancelled_and_failed_jobs_are_completed_events(
    client: httpx.AsyncClient, service: JobService, group: FakeGroup, receiver: Receiver
) -> None:
    running = await submit(client, webhook=receiver.url, webhook_events_filter=["completed"])
    run = await group.next_run()
    queued = await submit(client, webhook=receiver.url, webhook_events_filter=["completed"])
    await client.post(f"/v1/jobs/{queued}/cancel")
    run.finish(JobOutcome("failed", error="rank 0: RuntimeError: boom"))
    await until_done(service, running)

    deliveries = await received(receiver, 2)

    assert {d.job["id"]: (d.job["state"], d.job.get("error")) for d in deliveries} == {
        queued: ("cancelled", "cancelled before it started"),
        running: ("failed", "rank 0: RuntimeError: boom"),
    }


async def test_a_job_without_a_webhook_sends_nothing(
    service: JobService, group: FakeGroup, receiver: Receiver, hook_settings: Settings
) -> None:
    async with serving(service, hook_settings) as client:
        plain = await submit(client)
        (await group.next_run()).succeed()
        await until_done(service, plain)

    assert receiver.deliveries == []


# ---- failures ---------------------------------------------------------------------------------


async def test_a_5xx_is_tried_again_with_the_same_id_and_a_4xx_is_final(
    client: httpx.AsyncClient, service: JobService, group: FakeGroup, receiver: Receiver
) -> None:
    receiver.answers = [500, 503]  # then 200
    retried = await submit(client, webhook=receiver.url, webhook_events_filter=["completed"])
    (await group.next_run()).succeed()
    attempts = await received(receiver, 3)
    receiver.answers = [410]
    refused = await submit(client, webhook=receiver.url, webhook_events_filter=["start", "completed"])
    (await group.next_run()).succeed()
    await until_done(service, refused)
    after = await received(receiver, 5)

    assert [d.answered for d in attempts] == [500, 503, 200]
    assert len({d.headers["Webhook-Id"] for d in attempts}) == 1
    assert attempts[1].at - attempts[0].at >= 0.05  # the back-off
    # start refused with 410: not tried again; completed still goes out.
    assert [(d.event, d.answered) for d in after[3:]] == [("start", 410), ("completed", 200)]
    assert service.jobs[retried].record.state.value == service.jobs[refused].record.state.value == "succeeded"


async def test_a_final_delivery_is_owed_in_the_jobs_record_until_it_went(
    service: JobService, group: FakeGroup, receiver: Receiver, hook_settings: Settings
) -> None:
    """Owed from the job's end until its receiver answered: the record (journaled) holds the
    promise that a restart keeps (tests/reliability/test_storage_webhooks.py kills a server
    in between)."""
    receiver.hold = threading.Event()  # the receiver takes the delivery and answers later
    async with serving(service, hook_settings) as client:
        job_id = await submit(client, webhook=receiver.url, webhook_events_filter=["completed"])
        (await group.next_run()).succeed()
        await until_done(service, job_id)
        while_held = service.jobs[job_id].record.promises
        receiver.hold.set()
        await received(receiver, 1)
    # Leaving stopped the app, which let the delivery in flight finish.

    assert while_held == (webhooks.FINAL,)
    assert service.jobs[job_id].record.promises == ()


async def test_an_unreachable_receiver_is_tried_three_times_and_never_fails_the_job(
    group: FakeGroup, store: OutputStore, plugins: Plugins, settings: JobSettings, logged: list[logging.LogRecord]
) -> None:
    dead = f"127.0.0.1:{free_port()}"  # nothing listens there
    hook_settings = build(webhook_secret=SECRET, webhook_allow_hosts=[dead], webhook_backoff=0.01)
    predictor = as_predictor(EchoPredictor())
    service = JobService(
        [group], store, plugins, predictor, InputSchema(predictor, plugins.request_fields(hook_settings)), settings
    )
    await service.start()
    async with serving(service, hook_settings) as client:
        job_id = await submit(client, webhook=f"http://{dead}/hook?token=abc", webhook_events_filter=["completed"])
        (await group.next_run()).succeed()
        await until_done(service, job_id)
    await service.drain()

    assert service.jobs[job_id].record.state.value == "succeeded"
    assert [record.getMessage() for record in logged] == [
        f"job {job_id}: webhook job_{job_id}_1 to 127.0.0.1 not delivered after 3 tries (ConnectError)"
    ]


async def test_a_slow_receiver_never_holds_up_the_jobs(
    client: httpx.AsyncClient, service: JobService, group: FakeGroup, receiver: Receiver
) -> None:
    receiver.hold = threading.Event()
    try:
        first = await submit(client, webhook=receiver.url)
        run: FakeRun = await group.next_run()
        for step in range(1, 50):
            run.on_progress(step, 50)
        run.succeed()
        await until_done(service, first)
        second = await submit(client)
        (await group.next_run()).succeed()
        await until_done(service, second)
        assert receiver.deliveries == []  # every delivery of the first job still waits
    finally:
        receiver.hold.set()

    deliveries = await received(receiver, 3)

    # The steps that came while start was in flight: only the latest is sent.
    assert [(d.event, d.job.get("step")) for d in deliveries] == [("start", None), ("progress", 49), ("completed", 49)]


# ---- refusals -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("http://evil.example/hook", "evil.example:80 is not an allowed webhook host"),
        ("http://127.0.0.1/hook", "127.0.0.1:80 is not an allowed webhook host"),  # the receiver's port only
        ("ftp://{host}/hook", "must be an http:// or https:// URL"),
        ("not a url", "must be an http:// or https:// URL"),
    ],
)
async def test_a_webhook_the_operator_did_not_allow_is_a_400_naming_the_field(
    client: httpx.AsyncClient, service: JobService, receiver: Receiver, url: str, reason: str
) -> None:
    for path in ("/v1/jobs", "/generate"):
        response = await client.post(path, json={"prompt": "a", "webhook": url.format(host=receiver.host)})

        assert response.status_code == 400, response.text
        assert response.json()["field"] == "webhook"
        assert reason in response.json()["error"]
    assert service.jobs == {}


async def test_without_allowed_hosts_every_webhook_is_refused(
    group: FakeGroup, store: OutputStore, plugins: Plugins, settings: JobSettings
) -> None:
    predictor = as_predictor(EchoPredictor())
    schema = InputSchema(predictor, plugins.request_fields(Settings()))
    service = JobService([group], store, plugins, predictor, schema, settings)
    await service.start()
    async with serving(service, Settings()) as client:
        response = await client.post("/v1/jobs", json={"prompt": "a", "webhook": "http://127.0.0.1:9/"})
        plain = await client.post("/v1/jobs", json={"prompt": "a"})
    settings.drain_timeout = 0
    await service.drain()

    assert response.status_code == 400
    assert response.json() == {
        "error": "webhook: 127.0.0.1:9 is not an allowed webhook host (this server allows none)",
        "field": "webhook",
    }
    assert plain.status_code == 201


async def test_the_fields_are_documented_in_the_schema(client: httpx.AsyncClient) -> None:
    document = (await client.get("/schema/openapi.json")).json()
    fields = document["components"]["schemas"]["EchoPredictorInput"]["properties"]

    assert "--webhook-allow-host" in str(fields["webhook"])
    assert fields["webhook_events_filter"]["items"]["enum"] == ["start", "progress", "completed", "requeued"]
    assert "All three when left out" in fields["webhook_events_filter"]["description"]


# ---- allowed hosts and settings -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "allowed"),
    [
        ("http://hooks.example.com/x", True),  # HOST alone: the scheme's default port only
        ("https://HOOKS.example.com/x?y=1", True),
        ("https://HOOKS.example.com:8443/x?y=1", False),
        ("http://127.0.0.1:8080/cb", True),
        ("http://127.0.0.1/cb", False),  # port 80, only 8080 is listed
        ("https://127.0.0.1:8080/cb", True),
        ("http://[::1]:9000/", True),
        ("http://[::1]:9001/", False),
        ("http://hooks.example.com.evil.net/", False),
        ("http://hooks.example.com@evil.net/", False),  # user info: the host is evil.net
        ("http://evil.net/?hooks.example.com", False),
    ],
)
def test_allowed_hosts_match_exactly(url: str, allowed: bool) -> None:
    hosts = AllowedHosts(["hooks.example.com", "127.0.0.1:8080", "[::1]:9000"])

    if allowed:
        hosts.check(url)
    else:
        with pytest.raises(ValueError, match="is not an allowed webhook host"):
            hosts.check(url)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"webhook_allow_hosts": ["example.com"]}, "webhook_secret: is needed to sign webhooks"),
        ({"webhook_secret": "hunter2"}, "webhook_secret: must be whsec_ and the base64 of 24 to 64 random bytes"),
        ({"webhook_secret": SECRET, "webhook_allow_hosts": ["http://example.com/"]}, "is not HOST or HOST:PORT"),
        ({"webhook_secret": SECRET, "webhook_allow_hosts": ["example.com:http"]}, "is not HOST or HOST:PORT"),
    ],
)
def test_bad_webhook_settings_are_refused_at_startup(values: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        build(**values)


def test_the_secret_comes_from_a_file_once(tmp_path: Path) -> None:
    secret_file, empty = tmp_path / "secret", tmp_path / "empty"
    secret_file.write_text(SECRET + "\n")
    empty.write_text("\n")

    settings = build(webhook_secret_file=str(secret_file), webhook_allow_hosts=["a.example"])

    assert settings.section(WebhookSettings).webhook_secret == SECRET
    with pytest.raises(ConfigurationError, match="webhook_secret_file: give the secret once"):
        build(webhook_secret_file=str(secret_file), webhook_secret=SECRET)
    with pytest.raises(ConfigurationError, match="webhook_secret_file: its first line is empty"):
        build(webhook_secret_file=str(empty))
    with pytest.raises(ConfigurationError, match="webhook_secret_file: cannot read it: No such file or directory"):
        build(webhook_secret_file=str(tmp_path / "missing"))


def test_the_secret_comes_from_the_environment_and_hosts_repeat_on_the_command_line(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(webhooks.SECRET_ENV, SECRET)
    monkeypatch.setenv(AUTOLOAD_ENV, "1")  # only the plugin named

    settings = parse(
        ["--plugin", "para_attn_plugins.webhooks", "--webhook-allow-host", "a.example", "--webhook-allow-host", "b:81"]
    )

    section = settings.section(WebhookSettings)
    assert (section.webhook_secret, section.webhook_allow_hosts) == (SECRET, ["a.example", "b:81"])


def test_the_variables_old_name_still_works_with_a_warning_and_the_new_name_wins(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert webhooks.SECRET_ENV == "PARA_ATTN_SERVER_WEBHOOK_SECRET"  # the prefix of every server variable
    warned: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = warned.append  # type: ignore[method-assign]
    monkeypatch.setattr(settings_sources.log, "handlers", [handler])
    monkeypatch.delenv(webhooks.SECRET_ENV, raising=False)
    monkeypatch.setenv(webhooks.OLD_SECRET_ENV, SECRET)

    old = build(webhook_allow_hosts=["a.example"]).section(WebhookSettings)

    assert old.webhook_secret == SECRET
    assert [record.getMessage() for record in warned] == [
        "$PARA_ATTN_WEBHOOK_SECRET is deprecated: set $PARA_ATTN_SERVER_WEBHOOK_SECRET instead"
    ]
    newer = "whsec_" + base64.b64encode(bytes(32)).decode()
    monkeypatch.setenv(webhooks.SECRET_ENV, newer)
    assert build(webhook_allow_hosts=["a.example"]).section(WebhookSettings).webhook_secret == newer
    assert len(warned) == 1  # the old name, unread, warns of nothing
