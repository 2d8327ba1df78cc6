"""http.create_app: every route's status codes and bodies, over a real JobService and a fake
worker group. Requests go through httpx's ASGI transport on the test's own event loop, so
the test can play the worker group while a request is in flight."""

from __future__ import annotations

import asyncio
import base64
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import msgspec
import pytest
from litestar import get

from para_attn_server import hookimpl
from para_attn_server.engine.registry import Job
from para_attn_server.engine.service import JobService
from para_attn_server.http import create_app
from para_attn_server.http.schemas import CancelBody
from para_attn_server.records import JobState
from para_attn_server.storage.outputs import OutputStore
from para_attn_server.workers.outcome import JobOutcome
from tests.unit.fakes import (
    FakeGroup,
    FakeRun,
    KwargsPredictor,
    LegacyPredictor,
    MakeService,
    deadline,
    watch_subscriptions,
)

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.timeout(60, method="thread"),  # see test_jobs.py
]

PNG = b"\x89PNG\r\n\x1a\nnot really an image"


def connect(service: JobService, **options: Any) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=create_app(service, **options))
    return httpx.AsyncClient(transport=transport, base_url="http://testserver")


@pytest.fixture
async def client(service: JobService) -> AsyncIterator[httpx.AsyncClient]:
    async with connect(service) as client:
        yield client


async def generate(client: httpx.AsyncClient, **body: Any) -> str:
    response = await client.post("/generate", json={"prompt": "a cat", **body})
    assert response.status_code == 202, response.text
    return str(response.json()["request_id"])


async def run_to_end(service: JobService, group: FakeGroup, job_id: str, outcome: JobOutcome) -> Job:
    """Take the job from the group (it must be next) and end it with ``outcome``."""
    run = await group.next_run()
    assert run.job_id == job_id
    run.finish(outcome)
    job = service.jobs[job_id]
    await deadline(job.done.wait())
    return job


def succeeded(data: bytes = PNG, file_type: str = "png") -> JobOutcome:
    return JobOutcome("succeeded", output=data, file_type=file_type)


def assert_error_body(response: httpx.Response, *, names: str) -> None:
    """An error answer is JSON with an ``error`` message naming ``names``, and no trace."""
    body = response.json()
    assert set(body) <= {"error", "field", "state"}, body
    assert names in body["error"]
    assert "Traceback" not in response.text
    assert 'File "' not in response.text


# ---- /generate --------------------------------------------------------------------------------


async def test_generate_queues_the_job_and_answers_202_with_a_uuid4(
    client: httpx.AsyncClient, service: JobService
) -> None:
    request_id = await generate(client)

    assert uuid.UUID(request_id).version == 4
    assert service.jobs[request_id].record.inputs["prompt"] == "a cat"


@pytest.mark.parametrize(
    ("body", "names"),
    [
        pytest.param({"prompt": "a", "bogus": 1}, "bogus", id="unknown field"),
        pytest.param({}, "prompt", id="missing field"),
        pytest.param({"prompt": 7}, "prompt", id="wrong type"),
        pytest.param({"prompt": "a", "repeat": 99}, "repeat", id="out of range"),
        pytest.param({"prompt": "a", "output_path": "../x.png"}, "output_path", id="output_path escapes"),
        pytest.param({"prompt": "a", "output_path": "/etc/x.png"}, "output_path", id="output_path absolute"),
        pytest.param({"prompt": "forbidden"}, "prompt", id="predictor validate"),
    ],
)
async def test_generate_rejects_a_bad_body_with_400_naming_the_field(
    client: httpx.AsyncClient, service: JobService, body: dict[str, Any], names: str
) -> None:
    response = await client.post("/generate", json=body)

    assert response.status_code == 400
    assert_error_body(response, names=names)
    assert response.json()["field"] == names  # the web page shows the message next to it
    assert service.jobs == {}


async def test_generate_rejects_malformed_json_with_400(client: httpx.AsyncClient) -> None:
    response = await client.post("/generate", content=b'{"prompt": ', headers={"content-type": "application/json"})

    assert response.status_code == 400
    assert "error" in response.json()


async def test_generate_answers_429_with_retry_after_when_the_queue_is_full(
    client: httpx.AsyncClient, service: JobService, group: FakeGroup
) -> None:
    await generate(client)
    await group.next_run()
    for _ in range(service.settings.max_queue):
        await generate(client)

    response = await client.post("/generate", json={"prompt": "one too many"})

    assert response.status_code == 429
    assert response.headers["retry-after"] == str(service.retry_after())
    assert_error_body(response, names="queue is full")


async def test_generate_answers_503_before_the_group_is_ready(make_service: MakeService) -> None:
    service = await make_service(start=False)
    async with connect(service) as client:
        response = await client.post("/generate", json={"prompt": "a"})

    assert response.status_code == 503
    assert "retry-after" in response.headers


async def test_generate_answers_503_while_draining(client: httpx.AsyncClient, service: JobService) -> None:
    await service.drain()

    response = await client.post("/generate", json={"prompt": "a"})

    assert response.status_code == 503


async def test_kwargs_predictor_receives_fields_it_does_not_name(make_service: MakeService, group: FakeGroup) -> None:
    service = await make_service(KwargsPredictor())
    async with connect(service) as client:
        await generate(client, steps=3, scheduler="euler")

    run = await group.next_run()
    assert run.inputs == {"prompt": "a cat", "output_path": None, "steps": 3, "scheduler": "euler"}


async def test_body_over_the_limit_is_refused_with_413(service: JobService) -> None:
    async with connect(service, max_body_bytes=64) as client:
        response = await client.post("/generate", json={"prompt": "x" * 100})

    assert response.status_code == 413
    assert service.jobs == {}


# ---- /get_output and /request_status -----------------------------------------------------------

OUTPUT_ROUTES = [("GET", "/get_output"), ("POST", "/get_output"), ("POST", "/request_status")]


@pytest.fixture(params=OUTPUT_ROUTES, ids=lambda route: f"{route[0]} {route[1]}")
def get_output(request: pytest.FixtureRequest, client: httpx.AsyncClient) -> Any:
    method, path = request.param

    async def call(request_id: str) -> httpx.Response:
        return await client.request(method, f"{path}/{request_id}")

    return call


async def test_get_output_is_202_while_queued(client: httpx.AsyncClient, group: FakeGroup, get_output: Any) -> None:
    await generate(client)
    await group.next_run()
    queued = await generate(client)

    response = await get_output(queued)

    assert response.status_code == 202
    assert response.json() == {"status": "queued"}


async def test_get_output_is_202_with_progress_while_running(
    client: httpx.AsyncClient, group: FakeGroup, get_output: Any
) -> None:
    request_id = await generate(client)
    run = await group.next_run()
    run.on_progress(1, 4)

    response = await get_output(request_id)

    assert response.status_code == 202
    assert response.json() == {"status": "running", "progress": {"step": 1, "total": 4}}


async def test_get_output_is_200_with_base64_output_when_done(
    client: httpx.AsyncClient, service: JobService, group: FakeGroup, get_output: Any
) -> None:
    request_id = await generate(client)
    await run_to_end(service, group, request_id, succeeded(PNG, "png"))

    response = await get_output(request_id)

    assert response.status_code == 200
    body = response.json()
    assert base64.b64decode(body["output"], validate=True) == PNG
    assert body["file_type"] == "png"
    assert "output_path" not in body


async def test_get_output_names_the_clients_output_path(
    client: httpx.AsyncClient, service: JobService, group: FakeGroup, store: OutputStore, get_output: Any
) -> None:
    request_id = await generate(client, output_path="cats/a.png")
    await run_to_end(service, group, request_id, succeeded(PNG, "png"))

    body = (await get_output(request_id)).json()

    assert body["output_path"] == "cats/a.png"
    assert base64.b64decode(body["output"]) == (store.root / "cats" / "a.png").read_bytes() == PNG


async def test_get_output_is_500_with_the_error_when_the_job_failed(
    client: httpx.AsyncClient, service: JobService, group: FakeGroup, get_output: Any
) -> None:
    request_id = await generate(client)
    await run_to_end(service, group, request_id, JobOutcome("failed", error="rank 1: ValueError: bad"))

    response = await get_output(request_id)

    assert response.status_code == 500
    assert response.json() == {"error": "rank 1: ValueError: bad", "state": "failed"}


async def test_get_output_is_404_for_a_cancelled_job(
    client: httpx.AsyncClient, group: FakeGroup, get_output: Any
) -> None:
    await generate(client)
    await group.next_run()
    queued = await generate(client)
    assert (await client.post(f"/cancel/{queued}")).status_code == 200

    response = await get_output(queued)

    assert response.status_code == 404
    assert response.json()["state"] == "cancelled"


async def test_get_output_is_404_for_an_unknown_id(get_output: Any) -> None:
    response = await get_output(str(uuid.uuid4()))

    assert response.status_code == 404
    assert_error_body(response, names="unknown request id")


async def test_get_output_of_an_original_style_predictor_returns_the_path_it_wrote(
    make_service: MakeService, group: FakeGroup, store: OutputStore
) -> None:
    service = await make_service(LegacyPredictor())
    async with connect(service) as client:
        request_id = await generate(client, output_path="legacy.png")
        run = await group.next_run()
        # The predictor wrote a private file; the ranks hand its bytes back like any output.
        run.finish(JobOutcome("succeeded", output=PNG, file_type="png"))
        await deadline(service.jobs[request_id].done.wait())

        response = await client.get(f"/get_output/{request_id}")

    assert response.status_code == 200
    assert response.json() == {"output": "legacy.png", "file_type": "png"}
    assert (store.root / "legacy.png").read_bytes() == PNG


async def test_unexpected_error_is_a_plain_500_without_a_trace(
    client: httpx.AsyncClient, service: JobService, monkeypatch: pytest.MonkeyPatch
) -> None:
    request_id = await generate(client)

    def broken(job: Job) -> None:
        raise RuntimeError("secret detail at /srv/models/x")

    monkeypatch.setattr(service, "view", broken)
    response = await client.get(f"/v1/jobs/{request_id}")

    assert response.status_code == 500
    assert response.json() == {"error": "internal server error"}
    assert "secret" not in response.text


# ---- /cancel ----------------------------------------------------------------------------------


async def test_cancel_without_a_body_cancels_the_running_job(
    client: httpx.AsyncClient, service: JobService, group: FakeGroup
) -> None:
    running = await generate(client)
    await group.next_run()
    queued = await generate(client)

    response = await client.post("/cancel")

    assert response.status_code == 200
    assert response.json()["state"] == "cancelled"
    assert group.cancelled == [running]
    assert service.jobs[running].state is JobState.CANCELLED
    assert (await group.next_run()).job_id == queued  # the queued job was left alone


async def test_cancel_without_a_body_is_404_when_nothing_runs(client: httpx.AsyncClient) -> None:
    response = await client.post("/cancel")

    assert response.status_code == 404
    assert "error" in response.json()


@pytest.mark.parametrize("form", ["body", "path"])
async def test_cancel_by_id_cancels_that_queued_job(
    client: httpx.AsyncClient, service: JobService, group: FakeGroup, form: str
) -> None:
    running = await generate(client)
    await group.next_run()
    queued = await generate(client)

    if form == "body":
        response = await client.post("/cancel", json={"request_id": queued})
    else:
        response = await client.post(f"/cancel/{queued}")

    assert response.status_code == 200
    assert response.json()["state"] == "cancelled"
    assert service.jobs[queued].state is JobState.CANCELLED
    assert service.jobs[running].state is JobState.RUNNING
    assert group.cancelled == []


@pytest.mark.parametrize("form", ["body", "path"])
async def test_cancel_of_an_unknown_or_ended_job_is_404(
    client: httpx.AsyncClient, service: JobService, group: FakeGroup, form: str
) -> None:
    ended = await generate(client)
    await run_to_end(service, group, ended, succeeded())

    for request_id in (str(uuid.uuid4()), ended):
        if form == "body":
            response = await client.post("/cancel", json={"request_id": request_id})
        else:
            response = await client.post(f"/cancel/{request_id}")
        assert response.status_code == 404
    assert service.jobs[ended].state is JobState.SUCCEEDED


@pytest.mark.parametrize("body", [b"{not json", b'{"id": "x"}', b'{"request_id": 5}'])
async def test_cancel_with_a_malformed_body_is_400(client: httpx.AsyncClient, body: bytes) -> None:
    response = await client.post("/cancel", content=body, headers={"content-type": "application/json"})

    assert response.status_code == 400
    assert "error" in response.json()


# ---- /server_status and health ---------------------------------------------------------------


@pytest.mark.parametrize("method", ["GET", "POST"])
async def test_server_status_is_200_with_ranks_when_ready(
    client: httpx.AsyncClient, group: FakeGroup, method: str
) -> None:
    response = await client.request(method, "/server_status")

    assert response.status_code == 200
    body = response.json()
    assert body["ready"] is True
    assert body["ranks"] == msgspec.to_builtins(group.rank_rows())
    assert (body["queue_length"], body["busy"], body["restarts"], body["last_fault"]) == (0, False, 0, None)


async def test_server_status_is_503_while_starting(make_service: MakeService) -> None:
    service = await make_service(start=False)
    async with connect(service) as client:
        response = await client.get("/server_status")

    assert response.status_code == 503
    assert response.json()["status"] == "starting"
    assert "retry-after" in response.headers


async def test_server_status_is_503_with_the_fault_while_restarting(
    client: httpx.AsyncClient, group: FakeGroup
) -> None:
    group.start_gate = asyncio.Event()
    group.start_called.clear()
    group.crash("rank 1 (pid 4242) killed by SIGKILL")
    await deadline(group.start_called.wait())

    response = await client.get("/server_status")

    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "restarting"
    assert body["last_fault"] == "rank 1 (pid 4242) killed by SIGKILL"
    group.start_gate.set()


async def test_health_live_is_always_200(make_service: MakeService) -> None:
    service = await make_service(start=False)
    async with connect(service) as client:
        response = await client.get("/health/live")

    assert response.status_code == 200


async def test_health_ready_follows_the_group(make_service: MakeService, group: FakeGroup) -> None:
    service = await make_service(start=False)
    async with connect(service) as client:
        before = await client.get("/health/ready")
        await service.start()
        after = await client.get("/health/ready")

    assert before.status_code == 503
    assert after.status_code == 200


async def test_openapi_schema_lists_the_predictors_fields_and_limits(client: httpx.AsyncClient) -> None:
    response = await client.get("/schema/openapi.json")

    assert response.status_code == 200
    schema = response.json()["components"]["schemas"]["EchoPredictorInput"]
    assert set(schema["properties"]) == {"prompt", "repeat", "scale", "tags", "output_path", "model"}
    assert schema["required"] == ["prompt"]
    repeat = schema["properties"]["repeat"]
    assert (repeat["minimum"], repeat["maximum"], repeat["default"]) == (1, 50, 1)
    assert schema["properties"]["prompt"]["maxLength"] == 100


async def test_openapi_documents_each_submit_body_and_the_cancel_body_from_its_type(client: httpx.AsyncClient) -> None:
    document = (await client.get("/schema/openapi.json")).json()

    for path, method in [("/generate", "post"), ("/v1/jobs", "post"), ("/v1/jobs/{job_id}", "put")]:
        body = document["paths"][path][method]["requestBody"]
        assert body["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/EchoPredictorInput"}
    for path, method in [("/v1/jobs", "get"), ("/v1/jobs/{job_id}", "get"), ("/v1/jobs/{job_id}/cancel", "post")]:
        assert "requestBody" not in document["paths"][path][method]
    cancel = document["paths"]["/cancel"]["post"]["requestBody"]
    schema = cancel["content"]["application/json"]["schema"]
    assert cancel["required"] is False
    assert set(schema["properties"]) == set(CancelBody.__struct_fields__)
    assert schema["additionalProperties"] is False  # CancelBody forbids unknown fields


async def test_openapi_describes_the_job_view_with_total_and_its_old_name(client: httpx.AsyncClient) -> None:
    view = (await client.get("/schema/openapi.json")).json()["components"]["schemas"]["JobView"]["properties"]

    assert all(field.get("description") for field in view.values()), view
    assert "total" in view["total"]["description"]
    assert "alias" in view["total_steps"]["description"]


# ---- /v1/jobs ---------------------------------------------------------------------------------


async def test_create_job_is_201_with_location_and_the_view(client: httpx.AsyncClient, service: JobService) -> None:
    response = await client.post("/v1/jobs", json={"prompt": "a"})

    assert response.status_code == 201
    body = response.json()
    assert response.headers["location"] == f"/v1/jobs/{body['id']}"
    assert body["state"] == "queued"
    assert body["id"] in service.jobs


async def test_create_job_with_wait_answers_once_the_job_ended(
    client: httpx.AsyncClient, service: JobService, group: FakeGroup
) -> None:
    request = asyncio.create_task(client.post("/v1/jobs", params={"wait": 60}, json={"prompt": "a"}))
    run = await group.next_run()
    run.succeed()

    response = await deadline(request)

    assert response.status_code == 201
    assert response.json()["state"] == "succeeded"
    assert response.json()["output_url"] == f"/v1/jobs/{run.job_id}/output"


async def test_create_job_asking_for_the_output_gets_its_bytes(client: httpx.AsyncClient, group: FakeGroup) -> None:
    request = asyncio.create_task(
        client.post("/v1/jobs", params={"wait": 60}, json={"prompt": "a"}, headers={"accept": "image/png"})
    )
    run = await group.next_run()
    run.succeed(PNG, "png")

    response = await deadline(request)

    assert response.status_code == 201
    assert response.content == PNG
    assert response.headers["x-job-id"] == run.job_id


async def test_put_job_creates_then_repeats_idempotently(client: httpx.AsyncClient, service: JobService) -> None:
    job_id = str(uuid.uuid4())

    first = await client.put(f"/v1/jobs/{job_id}", json={"prompt": "a"})
    again = await client.put(f"/v1/jobs/{job_id}", json={"prompt": "a"})

    assert (first.status_code, again.status_code) == (201, 200)
    assert first.json()["id"] == again.json()["id"] == job_id
    assert list(service.jobs) == [job_id]


async def test_put_job_with_other_inputs_is_409(client: httpx.AsyncClient, service: JobService) -> None:
    job_id = str(uuid.uuid4())
    await client.put(f"/v1/jobs/{job_id}", json={"prompt": "a"})

    response = await client.put(f"/v1/jobs/{job_id}", json={"prompt": "b"})

    assert response.status_code == 409
    assert_error_body(response, names="different inputs")
    assert service.jobs[job_id].inputs["prompt"] == "a"


async def test_put_job_with_a_non_uuid_id_is_400_naming_it(client: httpx.AsyncClient, service: JobService) -> None:
    response = await client.put("/v1/jobs/my-job", json={"prompt": "a"})

    assert response.status_code == 400
    assert response.json()["field"] == "job_id"
    assert service.jobs == {}


async def test_put_job_stores_the_canonical_uuid(client: httpx.AsyncClient) -> None:
    job_id = uuid.uuid4()

    response = await client.put(f"/v1/jobs/{str(job_id).upper()}", json={"prompt": "a"})

    assert response.json()["id"] == str(job_id)
    assert (await client.get(f"/v1/jobs/{job_id}")).status_code == 200


async def test_put_job_with_a_bad_body_is_400(client: httpx.AsyncClient) -> None:
    response = await client.put(f"/v1/jobs/{uuid.uuid4()}", json={"prompt": "a", "repeat": 0})

    assert response.status_code == 400
    assert_error_body(response, names="repeat")


async def test_get_job_shows_its_state(client: httpx.AsyncClient, service: JobService, group: FakeGroup) -> None:
    request_id = await generate(client)
    await run_to_end(service, group, request_id, JobOutcome("failed", error="boom"))

    response = await client.get(f"/v1/jobs/{request_id}")

    assert response.status_code == 200
    body = response.json()
    assert (body["id"], body["state"], body["error"]) == (request_id, "failed", "boom")


async def test_cancel_job_is_200_then_409_once_ended(
    client: httpx.AsyncClient, service: JobService, group: FakeGroup
) -> None:
    await generate(client)
    await group.next_run()
    queued = await generate(client)

    first = await client.post(f"/v1/jobs/{queued}/cancel")
    second = await client.post(f"/v1/jobs/{queued}/cancel")

    assert first.status_code == 200
    assert first.json()["state"] == "cancelled"
    assert second.status_code == 409
    assert_error_body(second, names="cancelled")


@pytest.mark.parametrize("source", ["memory", "file"])
async def test_job_output_downloads_the_bytes_with_their_content_type(
    client: httpx.AsyncClient, service: JobService, group: FakeGroup, source: str
) -> None:
    # Recent outputs are served from memory, older ones from their file: the same answer.
    data = PNG + bytes(100_000)
    if source == "file":
        service.outputs.budget = 0
    request_id = await generate(client)
    job = await run_to_end(service, group, request_id, succeeded(data, "png"))
    if source == "file":
        service.store.flush()  # its file is written, so the next output pushes it out of memory
        await run_to_end(service, group, await generate(client), succeeded(PNG, "png"))
    assert (service.held_output(job) is not None) == (source == "memory")

    response = await client.get(f"/v1/jobs/{request_id}/output")

    assert response.status_code == 200
    assert response.content == data
    assert response.headers["content-type"] == "image/png"
    assert response.headers["content-disposition"] == f'inline; filename="{request_id}.png"'


async def test_job_output_is_409_while_the_job_runs(client: httpx.AsyncClient, group: FakeGroup) -> None:
    request_id = await generate(client)
    await group.next_run()

    response = await client.get(f"/v1/jobs/{request_id}/output")

    assert response.status_code == 409
    assert_error_body(response, names="running")


async def test_job_output_of_a_failed_job_is_409_with_its_error(
    client: httpx.AsyncClient, service: JobService, group: FakeGroup
) -> None:
    request_id = await generate(client)
    await run_to_end(service, group, request_id, JobOutcome("failed", error="rank 0: OOM"))

    response = await client.get(f"/v1/jobs/{request_id}/output")

    assert response.status_code == 409
    assert_error_body(response, names="rank 0: OOM")


def parse_sse(text: str) -> list[tuple[str, Any]]:
    events = []
    for block in text.replace("\r\n", "\n").strip().split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.splitlines() if ": " in line)
        events.append((fields["event"], msgspec.json.decode(fields["data"])))
    return events


async def test_events_stream_progress_and_states_until_the_job_ends(
    client: httpx.AsyncClient, service: JobService, group: FakeGroup, monkeypatch: pytest.MonkeyPatch
) -> None:
    subscribed = watch_subscriptions(service, monkeypatch)
    request_id = await generate(client)
    run: FakeRun = await group.next_run()

    stream = asyncio.create_task(client.get(f"/v1/jobs/{request_id}/events"))
    await deadline(subscribed.wait())
    run.on_progress(1, 2)
    run.on_progress(2, 2)
    run.succeed()
    response = await deadline(stream)

    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    events = parse_sse(response.text)
    assert [(event, data.get("state")) for event, data in events] == [
        ("state", "running"),
        ("progress", None),
        ("progress", None),
        ("state", "succeeded"),
    ]
    assert [data for event, data in events if event == "progress"] == [{"step": 1, "total": 2}, {"step": 2, "total": 2}]
    assert events[-1][1]["output_url"] == f"/v1/jobs/{request_id}/output"


async def test_events_of_an_ended_job_are_its_final_state(
    client: httpx.AsyncClient, service: JobService, group: FakeGroup
) -> None:
    request_id = await generate(client)
    await run_to_end(service, group, request_id, JobOutcome("cancelled"))

    response = await client.get(f"/v1/jobs/{request_id}/events")

    assert [(event, data["state"]) for event, data in parse_sse(response.text)] == [("state", "cancelled")]


# ---- ids never leak ---------------------------------------------------------------------------


async def test_unknown_id_answers_404_without_naming_any_other_job(
    client: httpx.AsyncClient, service: JobService, group: FakeGroup
) -> None:
    ended = await generate(client)
    await run_to_end(service, group, ended, succeeded())
    running = await generate(client)
    await group.next_run()
    queued = await generate(client)
    known = [ended, running, queued]
    unknown = [str(uuid.uuid4()), queued[:8], running[:-1], "x"]

    responses = []
    for request_id in unknown:
        responses += [
            await client.get(f"/get_output/{request_id}"),
            await client.post(f"/get_output/{request_id}"),
            await client.post(f"/request_status/{request_id}"),
            await client.post(f"/cancel/{request_id}"),
            await client.post("/cancel", json={"request_id": request_id}),
            await client.get(f"/v1/jobs/{request_id}"),
            await client.post(f"/v1/jobs/{request_id}/cancel"),
            await client.get(f"/v1/jobs/{request_id}/output"),
            await client.get(f"/v1/jobs/{request_id}/events"),
        ]

    for response in responses:
        assert response.status_code == 404, (response.request.url, response.text)
        assert "error" in response.json()
        for job_id in known:
            assert job_id not in response.text
            assert job_id[:8] not in response.text or job_id[:8] in str(response.request.url)


# ---- API key ----------------------------------------------------------------------------------


async def test_api_key_is_required_everywhere_but_liveness(service: JobService) -> None:
    async with connect(service, api_key="s3cret") as client:
        missing = await client.get("/server_status")
        wrong = await client.get("/server_status", headers={"authorization": "Bearer nope"})
        bearer = await client.get("/server_status", headers={"authorization": "Bearer s3cret"})
        header = await client.post("/generate", json={"prompt": "a"}, headers={"x-api-key": "s3cret"})
        live = await client.get("/health/live")

    assert (missing.status_code, wrong.status_code) == (401, 401)
    assert missing.json() == {"error": "missing or invalid API key"}
    assert (bearer.status_code, header.status_code, live.status_code) == (200, 202, 200)


async def test_options_of_a_job_lists_every_method_of_its_url(client: httpx.AsyncClient) -> None:
    response = await client.options(f"/v1/jobs/{uuid.uuid4()}")

    assert response.status_code == 204
    assert response.headers["allow"] == "GET, OPTIONS, PUT"


class RoutesPlugin:
    """Adds two routes: one marked public (as a web page's files are), one not."""

    @hookimpl
    def register_routes(self, register: Any) -> None:
        @get("/page", opt={"public": True}, include_in_schema=False)
        async def page() -> str:
            return "page"

        @get("/private", include_in_schema=False)
        async def private() -> str:
            return "private"

        register(page)
        register(private)


async def test_plugin_routes_are_served_and_only_public_ones_skip_the_api_key(service: JobService) -> None:
    service.plugins.pm.register(RoutesPlugin())
    async with connect(service, api_key="s3cret") as client:
        page = await client.get("/page")
        private = await client.get("/private")
        private_with_key = await client.get("/private", headers={"authorization": "Bearer s3cret"})

    assert (page.status_code, page.text) == (200, "page")
    assert private.status_code == 401
    assert (private_with_key.status_code, private_with_key.text) == (200, "private")


@pytest.mark.parametrize("source", ["memory", "file"])
async def test_a_large_output_is_streamed_whole_through_both_faces(
    client: httpx.AsyncClient, service: JobService, group: FakeGroup, source: str
) -> None:
    data = bytes(range(256)) * (16 * 1024 + 7)  # over 4 MiB, not a multiple of 3
    if source == "file":
        service.outputs.budget = 0
    request_id = await generate(client)
    job = await run_to_end(service, group, request_id, succeeded(data, "png"))
    if source == "file":
        service.store.flush()
        await run_to_end(service, group, await generate(client), succeeded(PNG, "png"))
    assert (service.held_output(job) is not None) == (source == "memory")

    original = await client.get(f"/get_output/{request_id}")
    binary = await client.get(f"/v1/jobs/{request_id}/output")

    assert base64.b64decode(original.json()["output"], validate=True) == data
    assert int(original.headers["content-length"]) == len(original.content)
    assert binary.content == data
    assert int(binary.headers["content-length"]) == len(data)


async def test_an_output_whose_file_changed_answers_410_without_paths(
    client: httpx.AsyncClient, service: JobService, group: FakeGroup
) -> None:
    request_id = await generate(client)
    run = await group.next_run()
    job = service.jobs[request_id]
    async with service.subscribe(job) as events:
        run.finish(succeeded(PNG, "png"))
        states = [await deadline(events.get()) for _ in range(2)]  # it succeeded; its copy is on disk
    assert [event for event, _ in states] == ["state", "state"]
    assert job.output_file is not None
    job.output_file.write_bytes(PNG[::-1])  # same size, other bytes
    service.store.forget(job.output_file)  # as a restarted server would: not checked yet
    service.outputs.forget(job.id)  # and not in memory

    for path in (f"/v1/jobs/{request_id}/output", f"/get_output/{request_id}"):
        response = await client.get(path)
        assert response.status_code == 410
        assert response.json() == {"error": "the output is gone: its file changed on disk since it was written"}


@pytest.mark.parametrize("size", [1000, 5 * 1024 * 1024], ids=["small", "streamed"])
async def test_a_predictors_base64_is_answered_as_it_came_and_decoded_for_bytes(
    client: httpx.AsyncClient, service: JobService, group: FakeGroup, size: int
) -> None:
    data = bytes(range(256)) * (size // 256)
    text = base64.b64encode(data)
    request_id = await generate(client)
    await run_to_end(service, group, request_id, JobOutcome("succeeded", output=text, file_type="png", base64=True))

    original = await client.get(f"/get_output/{request_id}")
    binary = await client.get(f"/v1/jobs/{request_id}/output")
    service.store.flush()

    assert original.json()["output"].encode() == text
    assert binary.content == data
    job = service.jobs[request_id]
    assert job.output_file is not None
    assert job.output_file.read_bytes() == data  # the server's copy holds the bytes
