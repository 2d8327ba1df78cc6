"""para_attn_client.media: files, bytes and image objects as the data URLs a picture or video
field takes; the clients send them so (over a mock transport: no server)."""

from __future__ import annotations

import asyncio
import base64
import io
import json
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image

from para_attn_client import AsyncClient, Client, data_url, media_value
from para_attn_client.media import has_media, media_inputs, media_type

PNG = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR"
JPEG = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00"
WEBP = b"RIFF\x24\x00\x00\x00WEBPVP8 "
GIF = b"GIF89a\x01\x00\x01\x00"
MP4 = b"\x00\x00\x00\x20ftypisom\x00\x00\x02\x00"
WEBM = b"\x1a\x45\xdf\xa3\x9f\x42\x86\x81\x01"
JOB = {"id": "6f1f0c1e-8c3a-4c8e-9a53-0d6f2a1b9e11", "state": "queued", "created_at": 1.0}


def decoded(url: str) -> tuple[str, bytes]:
    head, _, payload = url.partition(",")
    assert head.startswith("data:"), url[:40]
    assert head.endswith(";base64"), url[:40]
    return head.removeprefix("data:").removesuffix(";base64"), base64.b64decode(payload)


@pytest.mark.parametrize(
    ("data", "kind"),
    [
        (PNG, "image/png"),
        (JPEG, "image/jpeg"),
        (WEBP, "image/webp"),
        (GIF, "image/gif"),
        (b"GIF87a\x01\x00", "image/gif"),
        (b"II*\x00\x08\x00\x00\x00", "image/tiff"),
        (b"BM" + b"\x00" * 20, "image/bmp"),
        (MP4, "video/mp4"),
        (WEBM, "video/webm"),
        (b"\x00\x00\x00\x14ftypqt  ", "video/quicktime"),
        (b"hello, world", "application/octet-stream"),
        (b"", "application/octet-stream"),
        (b"RIFF\x24\x00\x00\x00WAVEfmt ", "application/octet-stream"),  # RIFF, but not WebP
    ],
)
def test_the_media_type_comes_from_the_bytes_signature(data: bytes, kind: str) -> None:
    assert media_type(data) == kind


def test_known_bytes_are_a_data_url_and_unknown_ones_bare_base64() -> None:
    assert decoded(data_url(PNG)) == ("image/png", PNG)
    assert decoded(data_url(bytearray(MP4))) == ("video/mp4", MP4)
    assert decoded(data_url(memoryview(JPEG))) == ("image/jpeg", JPEG)
    assert data_url(b"hello") == base64.b64encode(b"hello").decode()  # the server says what is wrong


def test_a_path_a_binary_file_and_bytes_become_data_urls(tmp_path: Path) -> None:
    (tmp_path / "cat.webp").write_bytes(WEBP)
    assert decoded(media_value(tmp_path / "cat.webp")) == ("image/webp", WEBP)
    with open(tmp_path / "cat.webp", "rb") as file:
        assert decoded(media_value(file)) == ("image/webp", WEBP)
    assert decoded(media_value(io.BytesIO(GIF))) == ("image/gif", GIF)
    for kind in (bytes, bytearray, memoryview):
        assert decoded(media_value(kind(PNG))) == ("image/png", PNG)


def test_a_pil_image_is_sent_as_png_of_the_same_pixels() -> None:
    picture = Image.new("RGB", (5, 3), (200, 10, 30))
    kind, data = decoded(media_value(picture))
    assert kind == "image/png"
    with Image.open(io.BytesIO(data)) as back:
        assert (back.format, back.size, back.getpixel((4, 2))) == ("PNG", (5, 3), (200, 10, 30))


def test_any_object_that_saves_itself_like_pil_is_an_image() -> None:
    class Saves:
        def save(self, fp: Any, format: str) -> None:
            fp.write(PNG if format == "PNG" else b"?")

    assert decoded(media_value(Saves())) == ("image/png", PNG)


@pytest.mark.parametrize(
    "value",
    [
        "job:6f1f0c1e-8c3a-4c8e-9a53-0d6f2a1b9e11",
        "https://example.com/cat.png",
        "data:image/png;base64,iVBORw0KGgo=",
        "iVBORw0KGgo=",
        "a cat in a hat",
        "cat.png",  # a str is never read as a path: Path("cat.png") is
        7,
        3.5,
        True,
        None,
        {"a": [1, 2]},
    ],
)
def test_strings_and_other_values_pass_unchanged(value: Any) -> None:
    assert media_value(value) == value
    assert not has_media({"field": value})


def test_lists_convert_item_by_item(tmp_path: Path) -> None:
    (tmp_path / "a.png").write_bytes(PNG)
    value = [tmp_path / "a.png", JPEG, "job:x", 3]
    assert has_media({"images": value})
    converted = media_value(value)
    assert [decoded(item) for item in converted[:2]] == [("image/png", PNG), ("image/jpeg", JPEG)]
    assert converted[2:] == ["job:x", 3]
    assert media_value((PNG,)) == [data_url(PNG)]
    assert media_inputs({"prompt": "p", "seed": 1, "tags": ["a"]}) == {"prompt": "p", "seed": 1, "tags": ["a"]}


class Recorder:
    """A mock transport's handler that keeps the JSON bodies and answers a queued job."""

    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.bodies.append(json.loads(request.content))
        return httpx.Response(201, json=JOB)


def test_the_client_sends_files_bytes_and_images_as_data_urls(tmp_path: Path) -> None:
    (tmp_path / "cat.png").write_bytes(PNG)
    recorder = Recorder()
    with Client("http://server", transport=httpx.MockTransport(recorder)) as client:
        client.submit({"image": tmp_path / "cat.png"}, prompt="a cat", mask_image=Image.new("L", (2, 2)))
        client.submit(prompt="a cat", images=[JPEG, "job:x"], video=MP4)

    first, second = recorder.bodies
    assert first["prompt"] == "a cat"
    assert decoded(first["image"]) == ("image/png", PNG)
    assert decoded(first["mask_image"])[0] == "image/png"
    assert [decoded(second["images"][0]), second["images"][1]] == [("image/jpeg", JPEG), "job:x"]
    assert decoded(second["video"]) == ("video/mp4", MP4)


def test_the_async_client_does_the_same() -> None:
    recorder = Recorder()

    async def submit() -> None:
        async with AsyncClient("http://server", transport=httpx.MockTransport(recorder)) as client:
            await client.submit(prompt="a cat", image=PNG, strength=0.5)

    asyncio.run(submit())
    (body,) = recorder.bodies
    assert decoded(body["image"]) == ("image/png", PNG)
    assert body["strength"] == 0.5
