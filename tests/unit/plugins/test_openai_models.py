"""The openai plugin on a server of two models (echo first, a hub-id-named image model
second), driven by the official SDK through an ASGI transport over a real JobService with a
fake worker group per model: ``model`` chooses the served model, its schema and its groups;
``/v1/models`` lists both; an unknown name is a 400 listing them. The same over a real
server with real ranks: tests/integration/test_models.py."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Annotated, Any

import httpx2
import msgspec
import openai
import pytest

from para_attn_server import Output, Predictor
from para_attn_server.engine.models import ServedModel
from para_attn_server.engine.service import JobService
from para_attn_server.http import create_app
from para_attn_server.legacy import as_predictor
from para_attn_server.plugin.manager import Plugins
from para_attn_server.schema import InputSchema
from para_attn_server.settings import JobSettings, Settings
from para_attn_server.storage.outputs import OutputStore
from tests.unit.fakes import EchoPredictor, FakeGroup, deadline

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.timeout(60, method="thread"),
    # The SDK marks its videos methods deprecated (OpenAI's own Sora service); the API stays.
    pytest.mark.filterwarnings("ignore:The Sora API:DeprecationWarning"),
]

FIRST, SECOND = "echo", "acme/sketcher"  # the second named as a hub id: owner/name
PNG = b"\x89PNG\r\n\x1a\nnot really an image"


class Sketcher(Predictor):
    def predict(
        self,
        prompt: str,
        width: Annotated[int, msgspec.Meta(ge=8, le=64)] = 32,
        height: Annotated[int, msgspec.Meta(ge=8, le=64)] = 32,
        palette: str = "grey",
    ) -> Output:
        raise NotImplementedError


@pytest.fixture
def plugins() -> Plugins:
    return Plugins.load(["para_attn_plugins.openai_api"], autoload=False)


@pytest.fixture
def groups() -> tuple[FakeGroup, FakeGroup]:
    return FakeGroup(index=0, model=FIRST), FakeGroup(index=1, model=SECOND)


@pytest.fixture
async def service(
    groups: tuple[FakeGroup, FakeGroup], store: OutputStore, plugins: Plugins, settings: JobSettings
) -> AsyncIterator[JobService]:
    echo, sketcher = as_predictor(EchoPredictor()), as_predictor(Sketcher())
    second = ServedModel(SECOND, sketcher, InputSchema(sketcher, model=SECOND))
    service = JobService(
        list(groups), store, plugins, echo, InputSchema(echo, model=FIRST), settings, more_models=[second]
    )
    await service.start()
    yield service
    settings.drain_timeout = 0
    await service.drain()
    await asyncio.to_thread(service.store.flush)


@pytest.fixture
async def client(service: JobService) -> AsyncIterator[openai.AsyncOpenAI]:
    transport = httpx2.ASGITransport(app=create_app(service, Settings()))
    http = httpx2.AsyncClient(transport=transport, base_url="http://testserver")
    async with openai.AsyncOpenAI(
        base_url="http://testserver/v1", api_key="k", http_client=http, max_retries=0
    ) as client:
        yield client


def inputs_of(service: JobService) -> list[dict[str, Any]]:
    """Each job's inputs as the server keeps them, oldest first."""
    return [dict(job.record.inputs) for job in reversed(list(service.jobs.values()))]


async def test_models_lists_every_served_model_and_finds_each(client: openai.AsyncOpenAI) -> None:
    assert [(model.id, getattr(model, "parent", None)) for model in (await client.models.list()).data] == [
        (FIRST, None),
        (SECOND, None),
    ]
    # The SDK sends the hub id's "/" percent-encoded: the server finds it all the same.
    assert (await client.models.retrieve(SECOND)).id == SECOND
    assert (await client.models.retrieve(FIRST)).id == FIRST
    with pytest.raises(openai.NotFoundError) as caught:
        await client.models.retrieve("gpt-image-1")
    assert caught.value.code == "model_not_found"
    assert "no model 'gpt-image-1' here: this server serves the models 'echo', 'acme/sketcher'" in (
        caught.value.message
    )


async def test_model_chooses_the_served_model_its_fields_and_its_groups(
    client: openai.AsyncOpenAI, service: JobService, groups: tuple[FakeGroup, FakeGroup]
) -> None:
    echo_group, sketch_group = groups
    request = asyncio.create_task(
        client.images.generate(prompt="a cat", model=SECOND, size="16x8", extra_body={"palette": "warm"})
    )
    run = await sketch_group.next_run()
    assert {key: run.inputs[key] for key in ("prompt", "width", "height", "palette")} == {
        "prompt": "a cat",
        "width": 16,
        "height": 8,
        "palette": "warm",
    }
    run.succeed(PNG)
    answer = await deadline(request)

    assert answer.size == "16x8"
    assert echo_group.runs.empty()
    assert inputs_of(service)[0]["model"] == SECOND  # the job names its model


async def test_no_model_or_the_first_runs_on_the_first_and_its_jobs_name_none(
    client: openai.AsyncOpenAI, service: JobService, groups: tuple[FakeGroup, FakeGroup]
) -> None:
    echo_group, sketch_group = groups
    for chosen in ({}, {"model": FIRST}):
        request = asyncio.create_task(client.images.generate(prompt="a cat", extra_body={"repeat": 2}, **chosen))
        run = await echo_group.next_run()
        assert run.inputs["repeat"] == 2
        run.succeed(PNG)
        await deadline(request)

    assert sketch_group.runs.empty()
    assert [("model" in inputs) for inputs in inputs_of(service)] == [False, False]  # as on a server of one


async def test_a_field_of_another_model_and_an_unknown_model_are_400s_naming_them(
    client: openai.AsyncOpenAI,
) -> None:
    cases: list[tuple[dict[str, Any], str]] = [
        ({"extra_body": {"palette": "warm"}}, "palette"),  # the first's schema has none
        ({"model": SECOND, "extra_body": {"repeat": 2}}, "repeat"),  # the second's has none
        ({"model": "dall-e-3"}, "model"),
    ]
    for fields, param in cases:
        with pytest.raises(openai.BadRequestError) as caught:
            await client.images.generate(prompt="a cat", **fields)
        assert caught.value.param == param, (fields, caught.value.body)
    assert "this server serves the models 'echo', 'acme/sketcher' (GET /v1/models)" in caught.value.message


async def test_a_video_request_names_the_model_that_makes_no_videos(client: openai.AsyncOpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        await client.videos.create(prompt="a cat", model=SECOND)
    assert "the served model (acme/sketcher) makes no videos; it makes images" in caught.value.message
