"""The openai plugin's routes driven by the official ``openai`` SDK (AsyncOpenAI) through an
ASGI transport, over a real JobService and a fake worker group that the test plays: the
paths a real group makes hard to reach on cue (a full queue, a job that fails while others
wait, a client that goes away mid-request, a server that is not ready)."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator
from typing import Any

import httpx
import httpx2
import openai
import pytest

from para_attn_plugins.openai_api.context import OpenAIContext
from para_attn_plugins.openai_api.settings import OpenAISettings
from para_attn_server import InputError, Output, Predictor
from para_attn_server.engine.service import JobService
from para_attn_server.http import create_app
from para_attn_server.plugin import Jobs
from para_attn_server.plugin.manager import Plugins
from para_attn_server.records import JobState
from para_attn_server.schema import InputSchema, RequestField
from para_attn_server.settings import Settings
from para_attn_server.workers.group import JobOutcome
from tests.unit.fakes import FakeGroup, MakeService, deadline
from tests.unit.plugins.checks import named

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.timeout(60, method="thread"),
    # The SDK marks its videos methods deprecated (OpenAI's own Sora service); the API stays.
    pytest.mark.filterwarnings("ignore:The Sora API:DeprecationWarning"),
]

PNG = b"\x89PNG\r\n\x1a\nnot really an image"
SETTINGS = Settings()  # the served name is the service's (``named``)


class Promptless(Predictor):
    def predict(self, size: int = 1) -> Output:
        raise NotImplementedError


@pytest.fixture
def plugins() -> Plugins:
    return Plugins.load(["para_attn_plugins.openai_api"], autoload=False)


def sdk(service: JobService, *, api_key: str | None = None, key: str = "k", **options: Any) -> openai.AsyncOpenAI:
    app = create_app(named(service, "echo"), SETTINGS, api_key=api_key)
    transport = httpx2.ASGITransport(app=app)
    http = httpx2.AsyncClient(transport=transport, base_url="http://testserver")
    return openai.AsyncOpenAI(base_url="http://testserver/v1", api_key=key, http_client=http, **options)


@pytest.fixture
async def client(service: JobService) -> AsyncIterator[openai.AsyncOpenAI]:
    async with sdk(service, max_retries=0) as client:
        yield client


def succeeded(data: bytes = PNG) -> JobOutcome:
    return JobOutcome("succeeded", output=data, file_type="png")


async def test_n_images_are_n_jobs_answered_once_all_succeeded(
    client: openai.AsyncOpenAI, service: JobService, group: FakeGroup
) -> None:
    request = asyncio.create_task(client.images.generate(prompt="a cat", n=2, extra_body={"repeat": 2}))
    for index in range(2):
        run = await group.next_run()
        assert run.inputs["prompt"] == "a cat"
        assert run.inputs["repeat"] == 2
        run.finish(succeeded(PNG + bytes([index])))
    answer = await deadline(request)

    assert [base64.b64decode(item.b64_json or "") for item in answer.data] == [PNG + b"\x00", PNG + b"\x01"]
    assert answer.output_format == "png"
    assert answer.size is None  # echo has no width and height
    assert [item.revised_prompt for item in answer.data] == [None, None]


async def test_a_predictors_own_base64_passes_through_and_url_links_to_the_output(
    client: openai.AsyncOpenAI, service: JobService, group: FakeGroup
) -> None:
    text = base64.b64encode(PNG)
    request = asyncio.create_task(client.images.generate(prompt="a cat"))
    (await group.next_run()).finish(JobOutcome("succeeded", output=text, file_type="png", base64=True))
    assert (await deadline(request)).data[0].b64_json == text.decode()

    request = asyncio.create_task(client.images.generate(prompt="a cat", response_format="url"))
    run = await group.next_run()
    run.finish(succeeded())
    answer = await deadline(request)
    assert answer.data[0].url == f"http://testserver/v1/jobs/{run.job_id}/output"
    assert answer.data[0].b64_json is None


async def test_a_failed_job_is_a_500_that_the_sdk_does_not_retry_and_the_others_are_cancelled(
    service: JobService, group: FakeGroup
) -> None:
    async with sdk(service) as client:  # the SDK's default: two retries of a 500
        request = asyncio.create_task(client.images.generate(prompt="a cat", n=2))
        (await group.next_run()).finish(JobOutcome("failed", error="rank 0: RuntimeError: boom"))
        with pytest.raises(openai.InternalServerError) as caught:
            await deadline(request)

    assert caught.value.status_code == 500
    assert caught.value.response.headers["x-should-retry"] == "false"
    assert "image 1 of 2" in caught.value.message
    assert "rank 0: RuntimeError: boom" in caught.value.message
    assert caught.value.code == "job_failed"
    await deadline(asyncio.gather(*(job.done.wait() for job in service.jobs.values())))
    states = [job.state.value for job in service.jobs.values()]
    assert states == ["failed", "cancelled"]  # one request, two jobs: no retry submitted more


async def test_a_full_queue_is_a_429_with_retry_after_and_cancels_what_this_request_queued(
    client: openai.AsyncOpenAI, service: JobService, group: FakeGroup
) -> None:
    service.submit({"prompt": "running"})
    await group.next_run()
    for index in range(service.settings.max_queue - 1):
        service.submit({"prompt": f"queued {index}"})

    with pytest.raises(openai.RateLimitError) as caught:
        await client.images.generate(prompt="a cat", n=2)  # the first fits, the second does not

    assert caught.value.response.headers["retry-after"] == str(service.retry_after())
    assert caught.value.code == "queue_full"
    assert "queue is full" in caught.value.message
    mine = [job for job in service.jobs.values() if job.inputs["prompt"] == "a cat"]
    assert [job.state for job in mine] == [JobState.CANCELLED]


async def test_a_client_that_goes_away_cancels_its_jobs(
    client: openai.AsyncOpenAI, service: JobService, group: FakeGroup
) -> None:
    request = asyncio.create_task(client.images.generate(prompt="a cat", n=2))
    run = await group.next_run()
    request.cancel()
    with pytest.raises(asyncio.CancelledError):
        await request

    assert run.job_id in group.cancelled
    await deadline(asyncio.gather(*(job.done.wait() for job in service.jobs.values())))
    assert [job.state for job in service.jobs.values()] == [JobState.CANCELLED, JobState.CANCELLED]


async def test_not_ready_is_a_503_in_openais_shape(make_service: MakeService) -> None:
    service = await make_service(start=False)
    async with sdk(service, max_retries=0) as client:
        with pytest.raises(openai.InternalServerError) as caught:
            await client.images.generate(prompt="a cat")

    assert caught.value.status_code == 503
    assert caught.value.code == "not_ready"
    assert caught.value.type == "server_error"
    assert caught.value.response.headers["retry-after"]


async def test_bad_fields_are_400s_naming_the_field_as_param(client: openai.AsyncOpenAI) -> None:
    cases: list[tuple[dict[str, Any], str]] = [
        ({"n": 5}, "n"),
        ({"size": "32x32"}, "size"),  # echo has no width and height
        ({"model": "dall-e-3"}, "model"),
        ({"extra_body": {"repeat": 0}}, "repeat"),
        ({"extra_body": {"colour": "red"}}, "colour"),
        ({"extra_body": {"prompt": "forbidden"}}, "prompt"),  # echo's own validate hook
    ]
    for fields, param in cases:
        with pytest.raises(openai.BadRequestError) as caught:
            await client.images.generate(prompt="a cat", **fields)
        assert caught.value.param == param, (fields, caught.value.body)
        assert caught.value.type == "invalid_request_error"


async def test_a_wrong_api_key_is_a_401_in_openais_shape_and_other_routes_keep_theirs(service: JobService) -> None:
    async with sdk(service, api_key="right", key="wrong", max_retries=0) as client:
        with pytest.raises(openai.AuthenticationError) as caught:
            await client.models.list()
        assert caught.value.code == "invalid_api_key"
    async with sdk(service, api_key="right", key="right") as client:
        assert [model.id for model in (await client.models.list()).data] == ["echo"]
    transport = httpx.ASGITransport(app=create_app(service, SETTINGS, api_key="right"))
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as plain:
        response = await plain.get("/v1/jobs")
    assert response.status_code == 401
    assert response.json() == {"error": "missing or invalid API key"}


async def test_models_lists_and_gets_the_served_model_only(client: openai.AsyncOpenAI) -> None:
    assert (await client.models.retrieve("echo")).owned_by == "para-attn-server"
    with pytest.raises(openai.NotFoundError) as caught:
        await client.models.retrieve("gpt-image-1")
    assert caught.value.code == "model_not_found"


async def test_routes_the_served_model_cannot_serve_are_404s_that_say_why(make_service: MakeService) -> None:
    service = await make_service(Promptless())
    async with sdk(service, max_retries=0) as client:
        with pytest.raises(openai.NotFoundError) as images:
            await client.images.generate(prompt="a cat")
        with pytest.raises(openai.NotFoundError) as videos:
            await client.videos.list()
    assert "takes no prompt" in images.value.message
    assert "makes no videos" in videos.value.message


async def test_an_image_model_sends_video_clients_to_the_images_route(client: openai.AsyncOpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        await client.videos.create(prompt="a cat")
    assert "use /v1/images/generations" in caught.value.message


def refuse_ftp(value: str | None) -> None:
    if value is not None and value.startswith("ftp:"):
        raise ValueError("must not be an ftp URL")


async def test_a_multipart_forms_plugin_fields_are_checked_as_a_json_bodys_are(service: JobService) -> None:
    # The videos route's multipart form takes another path to typed inputs than JSON does:
    # a plugin's check (the webhooks' allowed hosts) must refuse on both.
    service.schema = InputSchema(service.predictor, [RequestField("hook", str | None, None, "hooks", refuse_ftp)])
    api = OpenAIContext.of(Jobs(service), OpenAISettings(), 60.0)
    for form in (True, False):
        with pytest.raises(InputError) as info:
            api.checked({"prompt": "a", "hook": "ftp://x"}, None, form=form)
        assert (info.value.field, info.value.message) == ("hook", "must not be an ftp URL")
        assert api.checked({"prompt": "a", "hook": "http://x/"}, None, form=form)["hook"] == "http://x/"
