"""The official ``openai`` SDK, used as its documentation shows, generating images with a real
server: the tiny Flux predictor on 2 ranks behind an API key, and the tiny pipeline with an
injected step fault (tests.predictors.CallbackFaultTiny) for failures, a full queue and a
client that goes away."""

from __future__ import annotations

import base64
import io
import json
import socket
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import openai
import pytest
from PIL import Image

from para_attn_server.testing import Server

pytestmark = pytest.mark.timeout(240)

KEY = "sk-test-key"


@pytest.fixture(scope="module")
def tiny(launch: Any) -> Server:
    server: Server = launch("--model", "tiny", "--num-devices", "2", "--api-key", KEY)
    return server


@pytest.fixture(scope="module")
def faulty(launch: Any) -> Server:
    # max-queue 2: a request for two images fits an idle server's queue, and three jobs fill it.
    server: Server = launch("--model", "tests.predictors:CallbackFaultTiny", "--num-devices", "1", "--max-queue", "2")
    return server


def client(server: Server, key: str = KEY, **options: Any) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key=key, **options)


def image(b64: str | None) -> Image.Image:
    assert b64 is not None
    return Image.open(io.BytesIO(base64.b64decode(b64)))


def pixels(picture: Image.Image) -> np.ndarray:
    return np.asarray(picture.convert("RGB"), dtype=np.int16)


# ---- images from the tiny Flux pipeline ---------------------------------------------------


def test_generate_gives_a_png_of_the_requested_size(tiny: Server) -> None:
    answer = client(tiny).images.generate(
        prompt="a cat in a hat", size="48x32", extra_body={"seed": 7, "num_inference_steps": 2}
    )

    assert len(answer.data) == 1
    picture = image(answer.data[0].b64_json)
    assert picture.format == "PNG"
    assert picture.size == (48, 32)
    assert (answer.size, answer.output_format, answer.data[0].revised_prompt) == ("48x32", "png", None)


def test_n_images_differ_and_take_consecutive_seeds(tiny: Server) -> None:
    steps = {"num_inference_steps": 2}
    pair = client(tiny).images.generate(prompt="a cat", n=2, extra_body={"seed": 5, **steps})
    alone = client(tiny).images.generate(prompt="a cat", extra_body={"seed": 6, **steps})

    first, second = (pixels(image(item.b64_json)) for item in pair.data)
    assert np.abs(first - second).max() > 8  # two images, not one twice
    assert np.abs(second - pixels(image(alone.data[0].b64_json))).max() <= 1  # the second is seed 6


def test_url_answers_link_to_the_output_in_the_asked_format(tiny: Server) -> None:
    answer = client(tiny).images.generate(prompt="a cat", response_format="url", output_format="jpeg")

    url = answer.data[0].url
    assert url is not None
    assert url.startswith(f"{tiny.url}/v1/jobs/")
    assert answer.data[0].b64_json is None
    response = httpx.get(url, headers={"Authorization": f"Bearer {KEY}"})
    assert response.headers["content-type"] == "image/jpeg"
    assert Image.open(io.BytesIO(response.content)).format == "JPEG"
    assert answer.output_format == "jpeg"


def test_webp_is_offered_by_tiny(tiny: Server) -> None:
    answer = client(tiny).images.generate(prompt="a cat", output_format="webp", size="32x48")
    picture = image(answer.data[0].b64_json)
    assert (picture.format, picture.size) == ("WEBP", (32, 48))


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"n": 5}, "n"),  # --max-n 4
        ({"size": "33x32"}, "size"),  # tiny's sides are multiples of 16
        ({"size": "large"}, "size"),
        ({"model": "dall-e-3"}, "model"),
        ({"extra_body": {"num_inference_steps": 0}}, "num_inference_steps"),
        ({"extra_body": {"colour": "red"}}, "colour"),
        ({"extra_body": {"seed": -1}}, "seed"),
    ],
)
def test_bad_fields_raise_bad_request_naming_the_field(tiny: Server, fields: dict[str, Any], param: str) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client(tiny, max_retries=0).images.generate(prompt="a cat", **fields)

    assert caught.value.param == param
    assert caught.value.type == "invalid_request_error"
    assert param in caught.value.message


def test_a_wrong_key_raises_authentication_error(tiny: Server) -> None:
    with pytest.raises(openai.AuthenticationError) as caught:
        client(tiny, key="sk-wrong", max_retries=0).images.generate(prompt="a cat")
    assert caught.value.code == "invalid_api_key"


def test_models_lists_the_served_model(tiny: Server) -> None:
    assert [model.id for model in client(tiny).models.list()] == ["tiny"]


# ---- edits: a picture in, as the SDK uploads it -------------------------------------------------


def picture_file(path: Path, colour: tuple[int, int, int], size: tuple[int, int] = (48, 48)) -> Path:
    Image.new("RGB", size, colour).save(path)
    return path


def test_edit_gives_a_png_of_the_requested_size_from_the_uploaded_picture(tiny: Server, tmp_path: Path) -> None:
    source = picture_file(tmp_path / "cat.png", (220, 40, 40))
    extra = {"strength": 0.5, "seed": 7}
    with open(source, "rb") as file:
        answer = client(tiny).images.edit(
            model="tiny", image=file, prompt="a cat in a hat", size="32x32", extra_body=extra
        )

    picture = image(answer.data[0].b64_json)
    assert (picture.format, picture.size) == ("PNG", (32, 32))
    assert (answer.size, answer.output_format) == ("32x32", "png")
    # The picture is what the job started from: another one, same seed, gives another image.
    other = picture_file(tmp_path / "dog.png", (40, 40, 220))
    with open(other, "rb") as file:
        second = client(tiny).images.edit(image=file, prompt="a cat in a hat", size="32x32", extra_body=extra)
    assert np.abs(pixels(picture) - pixels(image(second.data[0].b64_json))).max() > 8


def test_an_edits_job_shows_no_picture_bytes_and_its_output_can_be_the_next_input(tiny: Server, tmp_path: Path) -> None:
    source = picture_file(tmp_path / "cat.png", (220, 40, 40))
    with open(source, "rb") as file:
        answer = client(tiny).images.edit(image=file, prompt="a cat", size="32x32", response_format="url")
    url = answer.data[0].url
    assert url is not None
    job_id = url.rsplit("/", 2)[-2]
    view = tiny.http.get(f"/v1/jobs/{job_id}", headers={"Authorization": f"Bearer {KEY}"}).json()
    assert view["state"] == "succeeded"
    assert base64.b64encode(source.read_bytes()).decode()[:40] not in json.dumps(view)

    chained = tiny.http.post(
        "/v1/images/edits", data={"prompt": "a cat", "image": f"job:{job_id}", "size": "32x32"},
        headers={"Authorization": f"Bearer {KEY}"},
    )  # fmt: skip
    assert chained.status_code == 200, chained.text
    assert image(chained.json()["data"][0]["b64_json"]).size == (32, 32)


@pytest.mark.parametrize(
    ("files", "param"),
    [
        ({"image": ("cat.png", b"not a picture", "image/png")}, "image"),
        ({"image": [("a.png", b"\x89PNG", "image/png"), ("b.png", b"\x89PNG", "image/png")]}, "image"),
        ({"image": ("cat.png", b"", "image/png"), "mask": ("m.png", b"", "image/png")}, "mask"),  # tiny has no mask
    ],
)
def test_bad_pictures_raise_bad_request_naming_openais_field(tiny: Server, files: dict[str, Any], param: str) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client(tiny, max_retries=0).images.edit(prompt="a cat", **files)
    assert caught.value.param == param, caught.value.message


# ---- failures, a full queue, a client that goes away ----------------------------------------


def job_count(server: Server) -> int:
    return len(server.http.get("/v1/jobs", params={"limit": 100}).json()["data"])


def test_a_failing_generation_runs_once_under_the_sdks_default_retries(faulty: Server) -> None:
    before = job_count(faulty)
    with pytest.raises(openai.InternalServerError) as caught:
        client(faulty).images.generate(prompt="fails", extra_body={"fault_step": 1})  # 2 retries by default

    assert caught.value.status_code == 500
    assert "injected fault in the step callback" in caught.value.message
    assert caught.value.response.headers["x-should-retry"] == "false"
    assert job_count(faulty) == before + 1


def test_a_full_queue_raises_rate_limit_error_with_retry_after(faulty: Server, tmp_path: Path) -> None:
    hold = tmp_path / "hold"
    running = faulty.submit(prompt="held", hold=str(hold))
    faulty.wait_running(running)
    queued = [faulty.submit(prompt=f"waits {index}") for index in range(2)]  # --max-queue 2: full

    with pytest.raises(openai.RateLimitError) as caught:
        client(faulty, max_retries=0).images.generate(prompt="one too many")

    assert int(caught.value.response.headers["retry-after"]) >= 1
    assert caught.value.code == "queue_full"
    hold.touch()
    assert [faulty.wait(job_id)["state"] for job_id in (running, *queued)] == ["succeeded"] * 3


def test_a_client_that_disconnects_cancels_its_jobs(faulty: Server, tmp_path: Path) -> None:
    hold = tmp_path / "hold"  # every job of the request waits for it before its pipeline runs
    body = json.dumps({"prompt": "abandoned", "n": 2, "hold": str(hold)}).encode()
    head = "POST /v1/images/generations HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
    since = len(faulty.log.lines)
    with socket.create_connection(("127.0.0.1", faulty.port)) as sock:
        sock.sendall(f"{head}Content-Length: {len(body)}\r\n\r\n".encode() + body)
        submitted = faulty.log.wait_for(r"/v1/images/generations: 2 job\(s\): (\S+) (\S+)", since=since)
    # The connection is closed: the second job, still queued behind the held first, ends at once.
    assert faulty.wait(submitted[2])["state"] == "cancelled"
    hold.touch()  # the first leaves its hold and stops at its first step
    assert faulty.wait(submitted[1])["state"] == "cancelled"
