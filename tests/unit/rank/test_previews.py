"""Previews: the JPEG sizing, rank 0's sender thread, the server's store, and the service's
``preview`` events and ``GET /v1/jobs/{id}/preview`` over a fake worker group."""

from __future__ import annotations

import asyncio
import io
import threading
from collections.abc import AsyncIterator
from typing import Any

import httpx
import numpy as np
import pytest
import torch
from PIL import Image

from para_attn_server.engine.previews import PreviewStore
from para_attn_server.engine.service import JobService
from para_attn_server.http import create_app
from para_attn_server.protocol import Preview
from para_attn_server.rank.previews import MAX_SIDE, PreviewSender, to_jpeg
from tests.unit.fakes import FakeGroup, deadline, watch_subscriptions
from tests.unit.http.test_app import parse_sse


def decoded(jpeg: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(jpeg))
    assert image.format == "JPEG"
    return image


# ---- to_jpeg ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("height", "width", "expected"),
    [
        (1024, 512, (128, 256)),  # (width, height) as PIL says it: the long side becomes 256
        (300, 1200, (256, 64)),
        (256, 256, (256, 256)),  # at the limit: kept
        (32, 48, (48, 32)),  # smaller: never enlarged
    ],
)
def test_a_preview_is_at_most_256_px_on_its_long_side_keeping_its_aspect(
    height: int, width: int, expected: tuple[int, int]
) -> None:
    pixels = np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8)

    image = decoded(to_jpeg(pixels))

    assert image.size == expected
    assert max(image.size) <= MAX_SIDE
    assert image.mode == "RGB"


def test_floats_tensors_and_pil_images_encode_alike() -> None:
    gradient = np.linspace(0, 1, 64 * 64 * 3, dtype=np.float32).reshape(64, 64, 3)
    as_uint8 = (gradient * 255).round().astype(np.uint8)
    reference = np.asarray(decoded(to_jpeg(as_uint8)), dtype=int)

    for image in (gradient, torch.from_numpy(gradient), torch.from_numpy(as_uint8), Image.fromarray(as_uint8)):
        assert np.array_equal(np.asarray(decoded(to_jpeg(image)), dtype=int), reference), type(image)


def test_the_colours_survive_the_encoding() -> None:
    pixels = np.zeros((64, 64, 3), dtype=np.uint8)
    pixels[:, :32] = (200, 30, 40)
    pixels[:, 32:] = (20, 60, 220)

    image = np.asarray(decoded(to_jpeg(pixels)), dtype=int)

    assert np.abs(image[:, :28] - (200, 30, 40)).max() < 12
    assert np.abs(image[:, 36:] - (20, 60, 220)).max() < 12


def test_a_large_pil_image_is_shrunk_on_a_copy() -> None:
    original = Image.new("RGB", (1000, 500), (10, 20, 30))

    assert decoded(to_jpeg(original)).size == (256, 128)
    assert original.size == (1000, 500)


# ---- PreviewSender ----------------------------------------------------------------------


class BlockingLink:
    """A control link whose sends wait until the test lets them through, one at a time."""

    def __init__(self) -> None:
        self.sent: list[Preview] = []
        self.entered = threading.Semaphore(0)
        self.release = threading.Semaphore(0)

    def send(self, message: Preview) -> None:
        self.entered.release()
        assert self.release.acquire(timeout=10)
        self.sent.append(message)


def test_the_sender_keeps_only_the_newest_waiting_preview_and_flush_waits_for_it() -> None:
    link = BlockingLink()
    sender = PreviewSender(link.send)
    image = np.zeros((8, 8, 3), dtype=np.uint8)

    sender.submit("job", 1, image)
    assert link.entered.acquire(timeout=10)  # step 1 is being sent
    for step in (2, 3, 4):  # none waits: each replaces the one before
        sender.submit("job", step, image)
    flushed = threading.Event()
    flusher = threading.Thread(target=lambda: (sender.flush(), flushed.set()))
    flusher.start()
    assert not flushed.wait(0.05)  # step 1 is still in hand
    link.release.release()
    assert link.entered.acquire(timeout=10)  # then the newest: step 4
    link.release.release()
    flusher.join(timeout=10)

    assert flushed.is_set()
    assert [(m.job_id, m.step) for m in link.sent] == [("job", 1), ("job", 4)]
    assert decoded(link.sent[-1].jpeg).size == (8, 8)


def test_a_function_is_called_on_the_senders_thread_and_never_when_it_was_replaced(
    caplog: pytest.LogCaptureFixture,
) -> None:
    link = BlockingLink()
    sender = PreviewSender(link.send)
    calls: list[tuple[int, str]] = []

    def picture(step: int) -> Any:
        def make() -> np.ndarray:
            calls.append((step, threading.current_thread().name))
            return np.full((4, 6, 3), 7, dtype=np.uint8) if step != 5 else np.zeros((4, 6))

        return make

    sender.submit("job", 1, picture(1))
    assert link.entered.acquire(timeout=10)
    sender.submit("job", 2, picture(2))  # replaced before the thread is free: never made
    sender.submit("job", 3, picture(3))
    link.release.release()
    assert link.entered.acquire(timeout=10)
    link.release.release()
    sender.flush()
    sender.submit("job", 5, picture(5))  # makes a bad picture: logged and dropped
    sender.flush()

    assert calls == [(1, "previews"), (3, "previews"), (5, "previews")]
    assert [m.step for m in link.sent] == [1, 3]
    assert decoded(link.sent[0].jpeg).size == (6, 4)
    assert "preview of job job at step 5 could not be sent" in caplog.text


def test_a_picture_that_is_not_an_image_is_refused_in_the_callers_thread() -> None:
    sender = PreviewSender(lambda message: None)

    with pytest.raises(ValueError, match=r"HxWx3 array.*\(4, 4\)"):
        sender.submit("job", 1, np.zeros((4, 4)))
    with pytest.raises(ValueError, match="HxWx3"):
        sender.submit("job", 1, [1, 2, 3])
    sender.flush()  # nothing was queued


# ---- PreviewStore -----------------------------------------------------------------------


def test_the_store_keeps_the_latest_preview_per_job_within_its_budget() -> None:
    store = PreviewStore(budget=25)
    store.put("a", 1, b"x" * 10)
    store.put("a", 2, b"y" * 10)  # replaces a's first
    store.put("b", 1, b"z" * 10)
    assert store.get("a") == (2, b"y" * 10)
    assert store.size == 20

    store.put("c", 1, b"w" * 10)  # 30 > 25: a's, updated longest ago, goes

    assert store.get("a") is None
    assert store.get("b") == (1, b"z" * 10)
    assert store.size == 20
    store.forget("b")
    assert store.get("b") is None
    assert store.size == 10


# ---- the service and the route ----------------------------------------------------------


@pytest.fixture
async def client(service: JobService) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=create_app(service))
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        yield client


def jpeg(colour: tuple[int, int, int]) -> bytes:
    return to_jpeg(np.full((16, 24, 3), colour, dtype=np.uint8))


@pytest.mark.anyio
async def test_previews_are_events_and_the_latest_is_served_as_a_jpeg(
    client: httpx.AsyncClient, service: JobService, group: FakeGroup, monkeypatch: pytest.MonkeyPatch
) -> None:
    subscribed = watch_subscriptions(service, monkeypatch)
    job_id = (await client.post("/v1/jobs", json={"prompt": "a cat"})).json()["id"]
    run = await group.next_run()
    assert run.on_preview is not None

    before = await client.get(f"/v1/jobs/{job_id}/preview")
    assert before.status_code == 404
    assert before.json() == {"error": "the job has no preview (yet)"}

    stream = asyncio.create_task(client.get(f"/v1/jobs/{job_id}/events"))
    await deadline(subscribed.wait())
    run.on_progress(1, 2)
    run.on_preview(1, jpeg((250, 0, 0)))
    run.on_progress(2, 2)
    run.on_preview(2, jpeg((0, 0, 250)))
    latest = await client.get(f"/v1/jobs/{job_id}/preview")
    run.succeed()
    events = parse_sse((await deadline(stream)).text)

    url = f"/v1/jobs/{job_id}/preview"
    assert [(event, data) for event, data in events if event == "preview"] == [
        ("preview", {"step": 1, "url": url}),
        ("preview", {"step": 2, "url": url}),
    ]
    assert [event for event, _ in events] == ["state", "progress", "preview", "progress", "preview", "state"]
    assert latest.status_code == 200
    assert latest.headers["content-type"] == "image/jpeg"
    assert latest.headers["x-preview-step"] == "2"
    assert latest.headers["cache-control"] == "no-store"
    red, _, blue = np.asarray(decoded(latest.content), dtype=float).mean(axis=(0, 1))
    assert blue > 200
    assert red < 50  # the second picture, the blue one
    # A finished job keeps its last preview.
    assert (await client.get(url)).content == latest.content


@pytest.mark.anyio
async def test_a_forgotten_jobs_preview_is_dropped(
    client: httpx.AsyncClient, service: JobService, group: FakeGroup
) -> None:
    service.settings.result_ttl = 10.0
    job_id = (await client.post("/v1/jobs", json={"prompt": "a cat"})).json()["id"]
    run = await group.next_run()
    assert run.on_preview is not None
    run.on_preview(1, jpeg((9, 9, 9)))
    run.succeed()
    job = service.jobs[job_id]
    await deadline(job.done.wait())
    assert service.previews.get(job_id) is not None
    assert job.finished_at is not None

    service.expire(job.finished_at + 11)

    assert service.previews.get(job_id) is None
    assert service.previews.size == 0
    assert (await client.get(f"/v1/jobs/{job_id}/preview")).status_code == 404


@pytest.mark.anyio
async def test_the_preview_route_is_in_the_openapi_document(client: httpx.AsyncClient) -> None:
    document = (await client.get("/schema/openapi.json")).json()
    operation = document["paths"]["/v1/jobs/{job_id}/preview"]["get"]

    assert set(operation["responses"]["200"]["content"]) == {"image/jpeg"}
    assert operation["responses"]["200"]["headers"]["X-Preview-Step"]["schema"]["type"] == "integer"
    assert "404" in operation["responses"]
    stream = document["paths"]["/v1/jobs/{job_id}/events"]["get"]["responses"]["200"]["content"]["text/event-stream"]
    event = document["components"]["schemas"][stream["schema"]["$ref"].rsplit("/", 1)[1]]["properties"]["event"]
    assert "preview" in str(event)
