"""The openai plugin's pictures: an edit's ``image`` and ``mask`` and a video's
``input_reference`` mapped onto the predictor's picture fields (mapping, no HTTP), then the
routes driven by the official SDK over a real JobService and a fake worker group."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import random
from collections.abc import AsyncIterator
from typing import Annotated, Any

import httpx2
import msgspec
import openai
import pytest
from PIL import Image as PILImage

from para_attn_plugins.openai_api import mapping
from para_attn_plugins.openai_api.mapping import Media, ModelFields
from para_attn_plugins.openai_api.schemas import ImageEditRequest, VideoRequest
from para_attn_server import Image, InputError, Mask, Output, Predictor
from para_attn_server.engine.service import JobService
from para_attn_server.http import create_app
from para_attn_server.plugin.manager import Plugins
from para_attn_server.schema import InputSchema
from para_attn_server.settings import Settings
from para_attn_server.workers.group import JobOutcome
from tests.unit.fakes import FakeGroup, MakeService, deadline
from tests.unit.plugins.checks import named, rejected

Side = Annotated[int, msgspec.Meta(ge=16, le=256, multiple_of=16)]


class Editor(Predictor):
    """image-to-image and inpainting, with diffusers' field names."""

    def predict(
        self,
        prompt: str,
        image: Image,
        mask_image: Mask | None = None,
        strength: Annotated[float, msgspec.Meta(ge=0, le=1)] = 0.6,
        width: Side = 32,
        height: Side = 32,
        seed: int = 0,
    ) -> Output:
        raise NotImplementedError


class Collage(Predictor):
    """Several pictures in one list field, named otherwise."""

    def predict(self, prompt: str, references: list[Image], seed: int = 0) -> Output:
        raise NotImplementedError


class TextOnly(Predictor):
    def predict(self, prompt: str, width: Side = 32, height: Side = 32, seed: int = 0) -> Output:
        raise NotImplementedError


class Animator(Predictor):
    """A video predictor that may start from a picture."""

    def predict(self, prompt: str, num_frames: int = 9, fps: int = 8, image: Image | None = None) -> Output:
        raise NotImplementedError


class TextVideo(Predictor):
    def predict(self, prompt: str, num_frames: int = 9, fps: int = 8) -> Output:
        raise NotImplementedError


EDITOR = ModelFields.of(InputSchema(Editor()))
COLLAGE = ModelFields.of(InputSchema(Collage()))
TEXT = ModelFields.of(InputSchema(TextOnly()))
ANIMATOR = ModelFields.of(InputSchema(Animator()))
PNG_HEAD = b"\x89PNG\r\n\x1a\n"


def png(size: tuple[int, int] = (8, 8), colour: int = 200) -> bytes:
    buffer = io.BytesIO()
    PILImage.new("RGB", size, (colour, 10, 30)).save(buffer, format="PNG")
    return buffer.getvalue()


def edits(
    body: dict[str, Any], fields: ModelFields = EDITOR, *, form: bool = False
) -> tuple[list[dict[str, Any]], dict[str, str]]:
    body = dict(body)
    images, mask = mapping.take_images(body), body.pop("mask", None)
    request, extras = mapping.split(body, ImageEditRequest, fields, form=form)
    mapping.refuse_files(extras, fields)
    return mapping.edit_inputs(request, images, mask, extras, fields, "m", 4, random.Random(0))


# ---- which fields take pictures -----------------------------------------------------------


def test_picture_fields_are_found_by_the_schemas_mark() -> None:
    assert EDITOR.media == {"image": Media("image"), "mask_image": Media("mask")}
    assert COLLAGE.media == {"references": Media("image", many=True)}
    assert ANIMATOR.media == {"image": Media("image")}
    assert TEXT.media == {}
    assert (EDITOR.media_field("image", "image"), EDITOR.media_field("mask", "mask_image")) == ("image", "mask_image")
    assert (COLLAGE.media_field("image", "image"), COLLAGE.media_field("mask", "mask_image")) == ("references", None)


def test_the_mark_of_a_picture_field_is_read() -> None:
    def marked(extra: dict[str, str]) -> Any:
        return msgspec.inspect.type_info(Annotated[str, msgspec.Meta(extra_json_schema=extra)])

    assert mapping.media_of(marked({"contentMediaType": "image/*", "format": "mask"})) == Media("mask")
    assert mapping.media_of(marked({"contentMediaType": "video/*", "format": "video"})) == Media("video")
    assert mapping.media_of(marked({"format": "image"})) is None  # a format alone is some other string
    assert mapping.media_of(msgspec.inspect.type_info(list[list[str]])) is None


# ---- edits -----------------------------------------------------------------------------------


def test_an_edit_maps_image_and_mask_onto_the_predictors_fields() -> None:
    picture, mask = png(), png(colour=0)
    planned, names = edits({"image": picture, "mask": mask, "prompt": "a hat", "size": "48x32", "strength": 0.3})

    assert planned == [
        {"prompt": "a hat", "image": picture, "mask_image": mask, "width": 48, "height": 32, "strength": 0.3, "seed": 0}
    ]
    assert names == {"image": "image", "mask_image": "mask"}


def test_a_picture_field_given_beside_openais_fields_passes_through() -> None:
    planned, names = edits({"image": png(), "prompt": "p", "mask_image": "job:x"})
    assert planned[0]["mask_image"] == "job:x"
    assert names == {"image": "image"}


def test_n_edits_share_the_picture_with_consecutive_seeds() -> None:
    planned, _ = edits({"image": "job:earlier", "prompt": "a hat", "n": 3, "seed": 5})
    assert [(each["image"], each["seed"]) for each in planned] == [
        ("job:earlier", 5),
        ("job:earlier", 6),
        ("job:earlier", 7),
    ]


def test_a_forms_text_is_converted_to_openais_types() -> None:
    planned, _ = edits({"image": png(), "prompt": "a hat", "n": "2", "response_format": "url"}, form=True)
    assert len(planned) == 2
    message = rejected(lambda: edits({"image": png(), "prompt": "a hat", "n": "two"}, form=True), "n")
    assert "int" in message


def test_several_images_go_to_a_list_field_in_order() -> None:
    first, second, third = png(colour=1), png(colour=2), png(colour=3)
    body = {"image[1]": third, "image[]": [first], "image[0]": second, "prompt": "p"}
    planned, names = edits(body, COLLAGE)
    assert planned[0]["references"] == [first, second, third]  # image[] before image[0], image[1]
    assert names == {"references": "image"}
    assert edits({"image": first, "prompt": "p"}, COLLAGE)[0][0]["references"] == [first]  # a list of one


def test_a_model_without_a_picture_field_is_a_400_naming_image() -> None:
    message = rejected(lambda: edits({"image": png(), "prompt": "p"}, TEXT), "image")
    assert "takes no input image" in message
    assert "/v1/images/generations" in message


@pytest.mark.parametrize(
    ("body", "field", "words"),
    [
        ({"prompt": "p"}, "image", "required"),
        ({"image": [png(), png()], "prompt": "p"}, "image", "one picture here, not 2"),
        ({"image": "", "prompt": "p"}, "image", "expected a picture"),
        ({"image": 7, "prompt": "p"}, "image", "expected a picture"),
        ({"image": png(), "mask": png(), "prompt": "p", "mask_image": "job:x"}, "mask_image", "give mask or"),
        ({"image": png(), "prompt": "p", "size": "17x32"}, "size", None),  # the predictor checks it later
        ({"image": png(), "prompt": "p", "model": "dall-e-2"}, "model", "serves"),
        ({"image": png(), "prompt": "p", "strength": png()}, "strength", "only picture fields take files"),
    ],
)
def test_bad_edits_are_400s_naming_the_field(body: dict[str, Any], field: str, words: str | None) -> None:
    if words is None:
        assert edits(body)[0][0]["width"] == 17  # passed on: the schema's own check names size
        return
    assert words in rejected(lambda: edits(body), field)


def test_a_mask_for_a_model_without_a_mask_field_is_a_400_naming_mask() -> None:
    message = rejected(lambda: edits({"image": png(), "mask": png(), "prompt": "p"}, COLLAGE), "mask")
    assert "no mask" in message


def test_errors_about_the_models_picture_fields_name_openais_field() -> None:
    def raising(field: str) -> None:
        with mapping.openai_params({"mask_image": "mask", "references": "image", "image": "image"}):
            raise InputError("not a picture", field)

    for field, param in [("mask_image", "mask"), ("references[1]", "image[1]"), ("image", "image"), ("seed", "seed")]:
        assert rejected(lambda field=field: raising(field), param)
    assert rejected(lambda: raising("mask_image"), "mask") == "not a picture (as the model's mask_image)"


# ---- a video's input_reference -------------------------------------------------------------


def videos(body: dict[str, Any], fields: ModelFields) -> dict[str, Any]:
    body = dict(body)
    mapping.fold_reference(body)
    request, extras = mapping.split(body, VideoRequest, fields)
    return mapping.video_inputs(request, extras, fields, "m", None)


@pytest.mark.parametrize(
    ("reference", "expected"),
    [
        (PNG_HEAD, PNG_HEAD),  # an uploaded file's bytes
        ("job:earlier", "job:earlier"),
        ({"image_url": "data:image/png;base64,iVBO"}, "data:image/png;base64,iVBO"),
    ],
)
def test_an_input_reference_is_the_predictors_image(reference: Any, expected: Any) -> None:
    inputs = videos({"prompt": "a cat", "input_reference": reference}, ANIMATOR)
    assert inputs == {"prompt": "a cat", "image": expected}
    request = msgspec.convert({"prompt": "a cat", "input_reference": reference}, VideoRequest)
    assert mapping.video_media_names(request, ANIMATOR) == {"image": "input_reference"}


def test_a_forms_image_url_field_is_folded_into_the_reference() -> None:
    assert videos({"prompt": "a", "input_reference[image_url]": "job:x"}, ANIMATOR)["image"] == "job:x"


@pytest.mark.parametrize(
    ("reference", "words"),
    [
        ({"file_id": "file-1"}, "file ids are not offered"),
        ({}, "expected a picture file"),
        (7, "expected a picture file"),
    ],
)
def test_a_bad_input_reference_is_a_400_naming_it(reference: Any, words: str) -> None:
    assert words in rejected(lambda: videos({"prompt": "a", "input_reference": reference}, ANIMATOR), "input_reference")


def test_a_text_only_video_model_still_refuses_an_input_reference() -> None:
    fields = ModelFields.of(InputSchema(TextVideo()))
    message = rejected(lambda: videos({"prompt": "a", "input_reference": PNG_HEAD}, fields), "input_reference")
    assert "generates from text only" in message
    message = rejected(
        lambda: videos({"prompt": "a", "input_reference": "x", "image": "y"}, ANIMATOR), "input_reference"
    )
    assert "not both" in message


# ---- through the routes, with the SDK (the server checks and stores the pictures) -------------


SETTINGS = Settings()  # the served name is the service's (``named``)


def sdk(service: JobService) -> openai.AsyncOpenAI:
    transport = httpx2.ASGITransport(app=create_app(named(service, "editor"), SETTINGS))
    http = httpx2.AsyncClient(transport=transport, base_url="http://testserver")
    return openai.AsyncOpenAI(base_url="http://testserver/v1", api_key="k", http_client=http, max_retries=0)


@pytest.fixture
def plugins() -> Plugins:
    return Plugins.load(["para_attn_plugins.openai_api"], autoload=False)


@pytest.fixture
async def editor(make_service: MakeService) -> AsyncIterator[openai.AsyncOpenAI]:
    async with sdk(await make_service(Editor())) as client:
        yield client


def ref(data: bytes) -> str:
    return "media:" + hashlib.sha256(data).hexdigest()


@pytest.mark.anyio
@pytest.mark.timeout(60, method="thread")
async def test_images_edit_sends_the_picture_and_mask_to_the_job(editor: openai.AsyncOpenAI, group: FakeGroup) -> None:
    picture, mask = png((16, 16)), png((16, 16), colour=0)
    request = asyncio.create_task(
        editor.images.edit(
            image=("cat.png", picture, "image/png"),
            mask=("mask.png", mask, "image/png"),
            prompt="a hat",
            size="48x32",
            extra_body={"strength": 0.25, "seed": 3},
        )
    )
    run = await group.next_run()
    assert (run.inputs["image"], run.inputs["mask_image"]) == (ref(picture), ref(mask))
    assert (run.inputs["width"], run.inputs["height"], run.inputs["strength"], run.inputs["seed"]) == (48, 32, 0.25, 3)
    run.finish(JobOutcome("succeeded", output=picture, file_type="png"))
    answer = await deadline(request)

    assert base64.b64decode(answer.data[0].b64_json or "") == picture
    assert answer.size == "48x32"


@pytest.mark.anyio
@pytest.mark.timeout(60, method="thread")
async def test_bad_pictures_are_400s_naming_openais_field(editor: openai.AsyncOpenAI) -> None:
    cases: list[tuple[dict[str, Any], str]] = [
        ({"image": ("cat.png", b"not a picture", "image/png")}, "image"),
        ({"image": ("cat.png", png(), "image/png"), "mask": ("m.png", b"nor this", "image/png")}, "mask"),
        ({"image": [("a.png", png(), "image/png"), ("b.png", png(), "image/png")]}, "image"),
    ]
    for fields, param in cases:
        with pytest.raises(openai.BadRequestError) as caught:
            await editor.images.edit(prompt="a hat", **fields)
        assert caught.value.param == param, (fields, caught.value.body)
        assert caught.value.type == "invalid_request_error"


@pytest.mark.anyio
@pytest.mark.timeout(60, method="thread")
async def test_a_model_without_an_image_field_answers_400_naming_image(make_service: MakeService) -> None:
    async with sdk(await make_service(TextOnly())) as client:
        with pytest.raises(openai.BadRequestError) as caught:
            await client.images.edit(image=("cat.png", png(), "image/png"), prompt="a hat")
    assert caught.value.param == "image"
    assert "takes no input image" in caught.value.message


@pytest.mark.anyio
@pytest.mark.timeout(60, method="thread")
@pytest.mark.filterwarnings("ignore:The Sora API:DeprecationWarning")
async def test_a_videos_input_reference_is_the_jobs_image(make_service: MakeService, group: FakeGroup) -> None:
    picture = png((16, 16))
    async with sdk(await make_service(Animator())) as client:
        video = await client.videos.create(prompt="a cat", input_reference=("cat.png", picture, "image/png"))
        run = await group.next_run()
        assert (run.job_id, run.inputs["image"]) == (video.id, ref(picture))
        run.finish(JobOutcome("succeeded", output=b"mp4", file_type="mp4"))

        with pytest.raises(openai.BadRequestError) as caught:
            await client.videos.create(prompt="a cat", input_reference=("cat.png", b"not a picture", "image/png"))
    assert caught.value.param == "input_reference"
