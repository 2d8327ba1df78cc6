"""Pictures in requests (engine/inputs.py, storage/inputs.py): every way a client gives one
becomes checked bytes on disk and a ``media:<sha256>`` reference in the job's inputs; every
refusal is an InputError naming the field, and then nothing is queued or kept."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import struct
import uuid
import zlib
from pathlib import Path
from typing import Any

import pytest
from PIL import Image as PILImage

from para_attn_server import Image, InputError, Mask, Output, Predictor
from para_attn_server.engine.registry import MAX_INTERRUPTIONS
from para_attn_server.engine.service import JobService
from para_attn_server.errors import NotReadyError
from para_attn_server.records import JobState
from para_attn_server.settings import JobSettings
from para_attn_server.storage.journal import JobJournal
from para_attn_server.storage.outputs import OutputStore
from tests.unit.fakes import FakeGroup, MakeService, deadline

pytestmark = pytest.mark.anyio


class Pictures(Predictor):
    def predict(
        self, image: Image, mask_image: Mask | None = None, extra: list[Image] | None = None, steps: int = 1
    ) -> Output | None:
        raise AssertionError("never called in the server process")


def png(width: int = 8, height: int = 6, color: str = "red") -> bytes:
    buffer = io.BytesIO()
    PILImage.new("RGB", (width, height), color).save(buffer, "PNG")
    return buffer.getvalue()


def bomb(width: int = 100_000, height: int = 100_000) -> bytes:
    """A PNG whose header claims ``width`` x ``height`` pixels, in a few hundred bytes."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    pixels = chunk(b"IDAT", zlib.compress(b"\0" * 64))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + pixels + chunk(b"IEND", b"")


def noise() -> bytes:
    buffer = io.BytesIO()
    PILImage.effect_noise((32, 32), 64).convert("RGB").save(buffer, "PNG")
    return buffer.getvalue()


def ico() -> bytes:
    buffer = io.BytesIO()
    PILImage.new("RGB", (16, 16)).save(buffer, "ICO")
    return buffer.getvalue()


def data_url(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode()


@pytest.fixture
def settings() -> JobSettings:
    limits = {"max_input_bytes": 4096, "max_input_pixels": 10_000}
    return JobSettings(max_queue=4, restart_backoff=0.0, job_timeout=None, **limits)


@pytest.fixture
async def pictures(make_service: MakeService) -> JobService:
    return await make_service(Pictures())


async def test_every_form_of_a_picture_becomes_the_same_reference_and_bytes_on_disk(
    pictures: JobService, group: FakeGroup, store: OutputStore
) -> None:
    picture = png()
    sha = hashlib.sha256(picture).hexdigest()
    for given in (data_url(picture), base64.b64encode(picture).decode(), picture):
        job, _ = await pictures.accept({"image": given})
        assert job.record.inputs["image"] == f"media:{sha}"
        assert [(m.sha256, m.format, m.width, m.height) for m in job.record.media] == [(sha, "PNG", 8, 6)]
        assert (store.jobs_dir / "inputs" / job.id / sha).read_bytes() == picture
        run = await group.next_run()
        assert run.media == {sha: picture}  # what the ranks get with the job
        run.succeed()
        await deadline(job.done.wait())


async def test_a_list_field_and_a_mask_each_get_their_references(pictures: JobService, group: FakeGroup) -> None:
    red, blue = png(color="red"), png(color="blue")
    job, _ = await pictures.accept({"image": red, "mask_image": data_url(blue), "extra": [blue, red]})
    digest = {data: f"media:{hashlib.sha256(data).hexdigest()}" for data in (red, blue)}
    assert job.record.inputs["extra"] == [digest[blue], digest[red]]
    assert job.record.inputs["mask_image"] == digest[blue]
    run = await group.next_run()
    assert run.media is not None
    assert set(run.media.values()) == {red, blue}


async def test_an_earlier_jobs_output_is_a_picture_by_its_id(pictures: JobService, group: FakeGroup) -> None:
    first, _ = await pictures.accept({"image": png(color="red")})
    made = png(color="green")
    (await group.next_run()).succeed(made, "png")
    await deadline(first.done.wait())

    second, _ = await pictures.accept({"image": f"job:{first.id}"})
    assert (await group.next_run()).media == {hashlib.sha256(made).hexdigest(): made}
    assert second.record.media[0].format == "PNG"


@pytest.mark.parametrize(
    ("inputs", "field", "reason"),
    [
        ({"image": base64.b64encode(b"not a picture").decode()}, "image", "not a picture"),
        ({"image": noise()[:-64]}, "image", "not a readable picture"),
        ({"image": "data:image/png;base64,%%%"}, "image", "not base64"),
        ({"image": "data:image/png,plain"}, "image", "not base64"),
        ({"image": bomb()}, "image", "too large a picture"),
        ({"image": png(101, 100)}, "image", "101x100 pixels, more than the 10000"),
        ({"image": png(), "extra": [png(), b"\0" * 4000]}, "extra[1]", "--max-input-bytes"),
        ({"image": "https://example.com/cat.png"}, "image", "fetches none"),
        ({"image": "job:8c8b7cf0-0000-4000-8000-000000000000"}, "image", "names no job"),
        ({"image": png(), "mask_image": ico()}, "mask_image", "is a ICO picture"),
    ],
    ids=["not-a-picture", "truncated", "bad-base64", "data-url-not-base64", "bomb", "too-many-pixels",
         "too-many-bytes", "url-not-allowed", "unknown-job", "unsupported-format"],
)  # fmt: skip
async def test_a_bad_picture_is_refused_naming_its_field_and_nothing_is_kept(
    pictures: JobService, store: OutputStore, inputs: dict[str, Any], field: str, reason: str
) -> None:
    with pytest.raises(InputError, match=reason) as refused:
        await pictures.accept(inputs)
    assert refused.value.field == field
    assert (pictures.jobs, list(pictures.queue)) == ({}, [])
    assert not any((store.jobs_dir / "inputs").glob("*/*"))


async def test_a_job_that_has_not_succeeded_is_no_picture(pictures: JobService, group: FakeGroup) -> None:
    first, _ = await pictures.accept({"image": png()})
    await group.next_run()  # running, not finished
    with pytest.raises(InputError, match="has not succeeded") as refused:
        await pictures.accept({"image": f"job:{first.id}"})
    assert refused.value.field == "image"


async def test_a_refused_submit_keeps_no_inputs_and_a_forgotten_job_takes_them_along(
    pictures: JobService, group: FakeGroup, store: OutputStore
) -> None:
    pictures.accepting = False
    with pytest.raises(Exception, match="not accepting"):
        await pictures.accept({"image": png()})
    assert not any((store.jobs_dir / "inputs").iterdir())
    pictures.accepting = True

    job, _ = await pictures.accept({"image": png()})
    (await group.next_run()).succeed()
    await deadline(job.done.wait())
    assert (store.jobs_dir / "inputs" / job.id).is_dir()
    pictures.registry.forget(job)
    await deadline(pictures.registry.inputs.settled())
    assert not (store.jobs_dir / "inputs" / job.id).exists()


async def test_inputs_changed_on_disk_fail_the_job_and_reach_no_rank(
    pictures: JobService, group: FakeGroup, store: OutputStore
) -> None:
    await pictures.accept({"image": png()})
    (await group.next_run()).succeed()  # the group is busy with this one while the next waits
    held, _ = await pictures.accept({"image": png(color="blue")})
    ((store.jobs_dir / "inputs" / held.id).iterdir().__next__()).write_bytes(png(color="white"))

    await deadline(held.done.wait())
    changed = "its input on the server's disk no longer matches what was accepted"
    assert (held.state, held.record.error) == (JobState.FAILED, changed)


# ---- after a restart ----------------------------------------------------------------------------


async def test_unfinished_jobs_are_queued_again_after_a_restart_with_their_pictures(
    group: FakeGroup, store: OutputStore, settings: JobSettings, plugins: Any, tmp_path: Path
) -> None:
    from para_attn_server.legacy import as_predictor
    from para_attn_server.schema import InputSchema

    predictor = as_predictor(Pictures())
    path = tmp_path / "jobs.sqlite3"
    services: list[JobService] = []

    async def restart() -> JobService:
        """A server on the journal: the last one died (nothing of it runs on)."""
        service = JobService([group], store, plugins, predictor, InputSchema(predictor), settings, JobJournal(path))
        services.append(service)
        service.recover()
        await service.start()
        return service

    first = await restart()
    picture, queued_picture = png(), png(color="blue")
    running, _ = await first.accept({"image": picture})
    queued, _ = await first.accept({"image": queued_picture})
    await group.next_run()  # ``running`` runs when the server dies; ``queued`` waits
    await first.journal.committed()  # type: ignore[union-attr]

    for death in range(1, MAX_INTERRUPTIONS):
        again = await restart()
        assert (await group.next_run()).media == {hashlib.sha256(picture).hexdigest(): picture}
        record = again.jobs[running.id].record
        assert (record.state, record.interrupted) == (JobState.RUNNING, death)  # queued again, and running again
        await again.journal.committed()  # type: ignore[union-attr]

    last = await restart()  # the server died under it MAX_INTERRUPTIONS times: given up
    assert (last.jobs[running.id].state, last.jobs[running.id].record.error) == (JobState.FAILED, "server restarted")
    # The job that never ran was queued again each time without counting, and runs now.
    assert (await group.next_run()).media == {hashlib.sha256(queued_picture).hexdigest(): queued_picture}
    assert (last.jobs[queued.id].record.interrupted, last.jobs[queued.id].state) == (0, JobState.RUNNING)


async def test_a_job_asked_to_cancel_ends_cancelled_after_a_restart(
    group: FakeGroup, store: OutputStore, settings: JobSettings, plugins: Any, tmp_path: Path
) -> None:
    from para_attn_server.legacy import as_predictor
    from para_attn_server.schema import InputSchema

    predictor = as_predictor(Pictures())
    group.stop_on_cancel = False  # the ranks have not stopped yet when the server dies
    first = JobService([group], store, plugins, predictor, InputSchema(predictor), settings, JobJournal(tmp_path / "j"))
    await first.start()
    job, _ = await first.accept({"image": png()})
    await group.next_run()
    first.cancel(job.id)
    await first.journal.committed()  # type: ignore[union-attr]

    again = JobService([group], store, plugins, predictor, InputSchema(predictor), settings, JobJournal(tmp_path / "j"))
    again.recover()
    assert (again.jobs[job.id].state, list(again.queue)) == (JobState.CANCELLED, [])


async def test_a_cancel_while_the_pictures_arrive_cancels_the_job_as_soon_as_it_exists(pictures: JobService) -> None:
    arrived, release = asyncio.Event(), asyncio.Event()

    async def fetch(url: str, budget: int) -> bytes:
        arrived.set()
        await release.wait()
        return png()

    pictures.media.fetch = fetch
    job_id = str(uuid.uuid4())
    submit = asyncio.create_task(pictures.accept({"image": "https://pics.test/cat.png"}, job_id))
    await deadline(arrived.wait())
    with pytest.raises(NotReadyError, match="still being received"):  # a retry of the same id meanwhile
        await pictures.accept({"image": png()}, job_id)
    assert pictures.cancel(job_id) is None  # not there yet: the client hears 404
    release.set()

    job, created = await deadline(submit)
    assert (created, job.state, list(pictures.queue)) == (True, JobState.CANCELLED, [])


async def test_a_recovered_job_whose_inputs_no_longer_fit_the_model_fails_saying_so(
    group: FakeGroup, store: OutputStore, settings: JobSettings, plugins: Any, tmp_path: Path
) -> None:
    from para_attn_server.legacy import as_predictor
    from para_attn_server.records import JobRecord
    from para_attn_server.schema import InputSchema

    journal = JobJournal(tmp_path / "jobs.sqlite3")
    journal.record(JobRecord(id=str(uuid.uuid4()), inputs={"prompt": "a cat"}, fingerprint=b"", created_at=1.0))
    await journal.committed()
    await journal.close()

    predictor = as_predictor(Pictures())  # the server now serves a model that needs an image
    service = JobService([group], store, plugins, predictor, InputSchema(predictor), settings, JobJournal(journal.path))
    assert service.recover() == 1
    (job,) = service.jobs.values()
    assert job.state is JobState.FAILED
    assert job.record.error is not None
    assert job.record.error.startswith("after a restart its inputs no longer fit this model")
