"""The official ``openai`` SDK's videos API against a real server: the tiny Wan pipeline
(``python -m para_attn_predictors.make_tiny wan DIR``) on 2 ranks, its MP4 decoded with PyAV."""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path
from typing import Any

import av
import numpy as np
import openai
import pytest
from PIL import Image

from para_attn_server.testing import Server

pytestmark = [
    pytest.mark.timeout(240),
    # The SDK marks its videos methods deprecated (OpenAI's own Sora service); the API stays.
    pytest.mark.filterwarnings("ignore:The Sora API:DeprecationWarning"),
]

POLL_MS = 50
SMALL = {"num_inference_steps": 2, "seed": 1}
TINY = "32x32"  # Wan's default 832x480 is too much for a CPU test


@pytest.fixture(scope="module")
def wan(tiny_pipeline: Callable[[str], Path], launch: Any) -> Server:
    server: Server = launch(
        "--model", "wan", "--model-path", str(tiny_pipeline("wan")), "--num-devices", "2",
        "-o", "max_sequence_length=16", "--video-poll-after-ms", str(POLL_MS),
    )  # fmt: skip
    return server


@pytest.fixture(scope="module")
def client(wan: Server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{wan.url}/v1", api_key="unused", max_retries=0)


def decode(mp4: bytes) -> tuple[list[np.ndarray], Any]:
    with av.open(io.BytesIO(mp4)) as container:
        stream = container.streams.video[0]
        return [frame.to_ndarray(format="rgb24") for frame in container.decode(stream)], stream.average_rate


def test_create_and_poll_then_download_gives_an_mp4_of_the_asked_length_and_size(client: openai.OpenAI) -> None:
    video = client.videos.create_and_poll(
        prompt="a cat dancing", seconds="1", size="48x32", extra_body={"fps": 8, **SMALL}
    )

    assert (video.status, video.progress, video.model, video.error) == ("completed", 100, "wan", None)
    assert (video.seconds, video.size, video.prompt) == ("1.125", "48x32", "a cat dancing")  # 8 fps x 1 s -> 9 frames
    frames, rate = decode(client.videos.download_content(video.id).read())
    assert len(frames) == 9
    assert {frame.shape for frame in frames} == {(32, 48, 3)}
    assert rate == 8

    thumbnail = Image.open(io.BytesIO(client.videos.download_content(video.id, variant="thumbnail").read()))
    assert (thumbnail.format, thumbnail.size) == ("WEBP", (48, 32))
    first = np.abs(np.asarray(thumbnail.convert("RGB"), dtype=np.int16) - frames[0]).mean()
    assert first < 8  # the first frame, through two lossy codecs


def test_the_create_answer_carries_the_poll_interval_the_sdk_reads(client: openai.OpenAI) -> None:
    raw = client.videos.with_raw_response.create(prompt="a cat", size=TINY, extra_body={"num_frames": 5, **SMALL})
    created = raw.parse()

    assert raw.headers["openai-poll-after-ms"] == str(POLL_MS)
    assert created.status in ("queued", "in_progress")
    done = client.videos.poll(created.id)
    assert done.status == "completed"
    assert "openai-poll-after-ms" not in client.videos.with_raw_response.retrieve(created.id).headers


def test_a_json_body_is_accepted_beside_the_sdks_multipart_form(wan: Server, client: openai.OpenAI) -> None:
    body = {"prompt": "a cat", "seconds": 1, "size": "32x32", "fps": 4, **SMALL}
    response = wan.http.post("/v1/videos", json=body)

    assert response.status_code == 200, response.text
    video = client.videos.poll(response.json()["id"])
    assert (video.status, video.seconds, video.size) == ("completed", "1.25", "32x32")  # 4 fps x 1 s -> 5 frames


def test_a_running_video_shows_its_progress_and_delete_cancels_and_forgets_it(
    wan: Server, client: openai.OpenAI
) -> None:
    video = client.videos.create(
        prompt="a long one", size=TINY, extra_body={"num_frames": 5, "num_inference_steps": 60}
    )
    wan.wait_running(video.id, step=1)

    running = client.videos.retrieve(video.id)
    assert running.status == "in_progress"
    assert 0 < running.progress < 100
    with pytest.raises(openai.ConflictError):
        client.videos.download_content(video.id)

    deleted = client.videos.delete(video.id)
    assert (deleted.id, deleted.deleted, deleted.object) == (video.id, True, "video.deleted")
    with pytest.raises(openai.NotFoundError):
        client.videos.retrieve(video.id)
    assert wan.http.get(f"/v1/jobs/{video.id}").status_code == 404


def test_list_pages_through_the_videos_in_either_order(client: openai.OpenAI) -> None:
    made = [
        client.videos.create_and_poll(prompt=f"clip {index}", size=TINY, extra_body={"num_frames": 1, **SMALL}).id
        for index in range(2)
    ]

    newest_first = [video.id for video in client.videos.list(limit=1)]  # the SDK follows last_id, page by page
    oldest_first = [video.id for video in client.videos.list(order="asc", limit=1)]
    assert newest_first[:2] == made[::-1]
    assert oldest_first == newest_first[::-1]
    page = client.videos.list(limit=1)
    assert (len(page.data), page.has_more) == (1, True)


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"input_reference": ("ref.png", b"\x89PNG\r\n\x1a\n", "image/png")}, "input_reference"),
        ({"seconds": "0"}, "seconds"),
        ({"size": "33x32"}, "size"),
        ({"model": "sora-2"}, "model"),
        ({"extra_body": {"num_frames": 8}}, "num_frames"),  # Wan takes 4k+1 frames
        ({"extra_body": {"colour": "red"}}, "colour"),
    ],
)
def test_bad_fields_raise_bad_request_naming_the_field(
    client: openai.OpenAI, fields: dict[str, Any], param: str
) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.videos.create(prompt="a cat", **{"size": TINY, **fields})
    assert caught.value.param == param


# ---- a video from a picture: input_reference -> the predictor's image (tiny Wan image to video) ----


@pytest.fixture(scope="module")
def wan_i2v(tiny_pipeline: Callable[[str], Path], launch: Any) -> Server:
    server: Server = launch(
        "--model", "wan", "--model-path", str(tiny_pipeline("wan-i2v")), "--num-devices", "2",
        "-o", "max_sequence_length=16", "--video-poll-after-ms", str(POLL_MS),
    )  # fmt: skip
    return server


def test_an_input_reference_starts_an_image_to_video_model_from_the_picture(wan_i2v: Server, tmp_path: Path) -> None:
    client = openai.OpenAI(base_url=f"{wan_i2v.url}/v1", api_key="unused", max_retries=0)
    source = tmp_path / "cat.png"
    Image.new("RGB", (32, 32), (220, 40, 40)).save(source)
    with open(source, "rb") as file:
        video = client.videos.create_and_poll(
            prompt="a cat dancing", input_reference=file, size=TINY, extra_body={"num_frames": 5, **SMALL}
        )

    assert (video.status, video.size, video.error) == ("completed", TINY, None)
    frames, _ = decode(client.videos.download_content(video.id).read())
    assert len(frames) == 5
    assert {frame.shape for frame in frames} == {(32, 32, 3)}
    # Without a picture, an image-to-video model says what it needs, under OpenAI's name for it.
    with pytest.raises(openai.BadRequestError) as caught:
        client.videos.create(prompt="a cat", size=TINY, extra_body={"num_frames": 5})
    assert caught.value.param == "image"
    assert "makes a video from a picture" in caught.value.message


def test_a_text_to_video_model_refuses_an_input_reference_naming_it(client: openai.OpenAI, tmp_path: Path) -> None:
    source = tmp_path / "cat.png"
    Image.new("RGB", (32, 32), (220, 40, 40)).save(source)
    with open(source, "rb") as file, pytest.raises(openai.BadRequestError) as caught:
        client.videos.create(prompt="a cat", input_reference=file, size=TINY, extra_body={"num_frames": 5, **SMALL})
    assert caught.value.param == "input_reference"
    assert "takes no image" in caught.value.message
