"""Adapters (LoRA) as OpenAI models (para_attn_plugins.openai_api.adapters): ``model`` naming
an adapter becomes the job's ``loras`` at scale 1, in the field mapping and through the
routes, driven by the official SDK over a real JobService and a fake worker group (the
served tiny model with real adapters: tests/integration/test_adapter_surfaces.py)."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from typing import Any

import httpx2
import openai
import pytest

from para_attn_plugins.openai_api import mapping
from para_attn_plugins.openai_api.adapters import model_adapter, with_adapter
from para_attn_plugins.openai_api.mapping import ModelFields
from para_attn_plugins.openai_api.schemas import ImageRequest, VideoRequest
from para_attn_server import Output, Predictor
from para_attn_server.adapters import Adapters
from para_attn_server.engine.service import JobService
from para_attn_server.http import create_app
from para_attn_server.plugin.manager import Plugins
from para_attn_server.schema import InputSchema
from para_attn_server.settings import Settings
from para_attn_server.workers.group import JobOutcome
from tests.unit.fakes import FakeGroup, MakeService, deadline
from tests.unit.plugins.checks import named, rejected

SETTINGS = Settings()  # the served name is the service's (``named``)
A, B = {"name": "a", "scale": 1.0}, {"name": "b", "scale": 0.5}


class Painter(Predictor):
    supports_loras = True

    def predict(self, prompt: str, seed: int = 0) -> Output:
        raise NotImplementedError


class Animator(Predictor):
    supports_loras = True

    def predict(self, prompt: str, num_frames: int = 9, fps: int = 8) -> Output:
        raise NotImplementedError


# ---- the mapping ----------------------------------------------------------------------------


def test_model_names_the_served_model_or_an_offered_adapter() -> None:
    assert model_adapter(None, "tiny", ["a"]) is None
    assert model_adapter("tiny", "tiny", ["a"]) is None
    assert model_adapter("a", "tiny", ["a", "b"]) == "a"
    assert "serves 'tiny' and its adapters a, b (GET /v1/models)" in rejected(
        lambda: model_adapter("c", "tiny", ["b", "a"]), "model"
    )
    assert "serves 'tiny' only" in rejected(lambda: model_adapter("a", "tiny"), "model")


def test_the_adapter_goes_first_and_a_scale_the_request_gives_it_stands() -> None:
    assert with_adapter({"prompt": "p"}, None) == {"prompt": "p"}
    assert with_adapter({"prompt": "p"}, "a") == {"prompt": "p", "loras": [A]}
    assert with_adapter({"loras": [B]}, "a") == {"loras": [A, B]}
    assert with_adapter({"loras": [{"name": "a", "scale": 0.3}]}, "a") == {"loras": [{"name": "a", "scale": 0.3}]}
    assert with_adapter({"loras": "not a list"}, "a") == {"loras": "not a list"}  # for the schema to refuse


def test_images_and_videos_apply_the_adapter_model_names() -> None:
    fields = ModelFields.of(InputSchema(Painter()))
    request, extras = mapping.split({"prompt": "p", "model": "a", "n": 2}, ImageRequest, fields)
    planned = mapping.image_inputs(request, extras, fields, "painter", 4, random.Random(0), ["a"])
    assert planned == [{"prompt": "p", "loras": [A], "seed": 0}, {"prompt": "p", "loras": [A], "seed": 1}]

    video = ModelFields.of(InputSchema(Animator()))
    request, extras = mapping.split({"prompt": "p", "model": "b"}, VideoRequest, video)
    assert mapping.video_inputs(request, extras, video, "animator", Animator(), ["b"])["loras"] == [
        {"name": "b", "scale": 1.0}
    ]
    request, extras = mapping.split({"prompt": "p", "model": "b"}, VideoRequest, video)
    assert "only" in rejected(lambda: mapping.video_inputs(request, extras, video, "animator", Animator()), "model")


# ---- the routes -----------------------------------------------------------------------------


@pytest.fixture
def plugins() -> Plugins:
    return Plugins.load(["para_attn_plugins.openai_api"], autoload=False)


async def serving(make_service: MakeService, predictor: Predictor) -> tuple[JobService, Adapters]:
    service = await make_service(predictor)
    adapters = Adapters({"a": "/adapters/a", "b": "/adapters/b"})
    service.schema = InputSchema(predictor, (), adapters)
    return service, adapters


def sdk(service: JobService) -> openai.AsyncOpenAI:
    transport = httpx2.ASGITransport(app=create_app(named(service, "painter"), SETTINGS))
    http = httpx2.AsyncClient(transport=transport, base_url="http://testserver")
    return openai.AsyncOpenAI(base_url="http://testserver/v1", api_key="k", http_client=http, max_retries=0)


@pytest.fixture
async def painter(make_service: MakeService) -> AsyncIterator[tuple[openai.AsyncOpenAI, Adapters]]:
    service, adapters = await serving(make_service, Painter())
    async with sdk(service) as client:
        yield client, adapters
    await asyncio.to_thread(service.store.flush)  # the outputs written behind, before the loop closes


def applied(inputs: dict[str, Any]) -> list[tuple[str, float]]:
    return [(lora["name"], lora["scale"]) for lora in inputs.get("loras", [])]


@pytest.mark.anyio
@pytest.mark.timeout(60, method="thread")
async def test_models_lists_each_adapter_with_its_parent_as_offered_now(
    painter: tuple[openai.AsyncOpenAI, Adapters],
) -> None:
    client, adapters = painter
    listed = (await client.models.list()).data
    assert [(model.id, getattr(model, "parent", None)) for model in listed] == [
        ("painter", None), ("a", "painter"), ("b", "painter"),
    ]  # fmt: skip
    assert getattr(await client.models.retrieve("b"), "parent", None) == "painter"

    adapters.remove("b")  # as DELETE /v1/loras/b does
    assert [model.id for model in (await client.models.list()).data] == ["painter", "a"]
    with pytest.raises(openai.NotFoundError) as caught:
        await client.models.retrieve("b")
    assert "serves 'painter' and its adapters a" in caught.value.message


@pytest.mark.anyio
@pytest.mark.timeout(60, method="thread")
async def test_an_adapters_model_name_is_its_loras_at_scale_1(
    painter: tuple[openai.AsyncOpenAI, Adapters], group: FakeGroup
) -> None:
    client, _ = painter
    cases: list[tuple[dict[str, Any], list[tuple[str, float]]]] = [
        ({"model": "a"}, [("a", 1.0)]),
        ({"model": "a", "extra_body": {"loras": [B]}}, [("a", 1.0), ("b", 0.5)]),
        ({"model": "a", "extra_body": {"loras": [{"name": "a", "scale": 0.3}]}}, [("a", 0.3)]),
        ({"model": "painter"}, []),
        ({}, []),
    ]
    for fields, expected in cases:
        request = asyncio.create_task(client.images.generate(prompt="a cat", **fields))
        run = await group.next_run()
        assert applied(run.inputs) == expected, fields
        run.finish(JobOutcome("succeeded", output=b"png", file_type="png"))
        await deadline(request)

    with pytest.raises(openai.BadRequestError) as caught:
        await client.images.generate(prompt="a cat", model="c")
    assert caught.value.param == "model"
    assert "its adapters a, b" in caught.value.message


@pytest.mark.anyio
@pytest.mark.timeout(60, method="thread")
@pytest.mark.filterwarnings("ignore:The Sora API:DeprecationWarning")
async def test_a_video_of_an_adapters_model_name_applies_it(make_service: MakeService, group: FakeGroup) -> None:
    service, _ = await serving(make_service, Animator())
    async with sdk(service) as client:
        video = await client.videos.create(prompt="a cat", model="b")  # the SDK's form
        run = await group.next_run()
        assert (run.job_id, applied(run.inputs)) == (video.id, [("b", 1.0)])
        run.finish(JobOutcome("succeeded", output=b"mp4", file_type="mp4"))
    job = service.get(video.id)
    assert job is not None
    await deadline(job.done.wait())
    await asyncio.to_thread(service.store.flush)  # its output written behind, before the loop closes
