"""The server's own copies are written behind the answers, but not without limit: once the
outputs waiting for the writer are past --output-memory-bytes, the group that finished a job
takes its next one only when that job's copy is on disk, so a writer that falls behind slows
the groups instead of holding every output in memory (a long soak grew ~50 KiB a job that way)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from para_attn_server.engine.service import JobService
from para_attn_server.legacy import as_predictor
from para_attn_server.plugin.manager import Plugins
from para_attn_server.records import JobState
from para_attn_server.schema import InputSchema
from para_attn_server.settings import JobSettings
from para_attn_server.storage.journal import JobJournal
from para_attn_server.storage.outputs import OutputStore
from tests.unit.fakes import EchoPredictor, FakeGroup, deadline

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(60, method="thread")]
OUTPUT = b"\x89PNG" + bytes(60)


@pytest.fixture
def settings() -> JobSettings:
    return JobSettings(max_queue=4, restart_backoff=0.0, job_timeout=None, output_memory_bytes=100)


class Gate(threading.Event):
    """Holds every write-behind in the writer thread until set: a writer that fell behind.
    ``holding`` is set once the writer waits at it."""

    def __init__(self) -> None:
        super().__init__()
        self.holding = threading.Event()

    def hold(self, data: Callable[[], bytes]) -> bytes:
        self.holding.set()
        self.wait(10)
        return data()


@pytest.fixture
def gate(store: OutputStore, monkeypatch: Any) -> Gate:
    gate = Gate()
    write_behind = store.write_behind
    monkeypatch.setattr(
        store, "write_behind", lambda target, data, done: write_behind(target, lambda: gate.hold(data), done)
    )
    return gate


async def test_within_the_budget_a_job_ends_before_its_copy_is_written(
    service: JobService, group: FakeGroup, gate: Gate, store: OutputStore
) -> None:
    job, _ = await service.accept({"prompt": "small"})
    (await group.next_run()).succeed(OUTPUT, "png")  # 64 bytes: within the 100
    await deadline(job.done.wait())
    assert job.state is JobState.SUCCEEDED
    assert job.record.output_sha256 is None  # not on disk yet: served from memory meanwhile
    gate.set()
    store.flush()


async def test_past_the_budget_the_group_takes_no_new_job_until_the_copy_is_on_disk(
    service: JobService, group: FakeGroup, gate: Gate
) -> None:
    first, _ = await service.accept({"prompt": "first"})
    (await group.next_run()).succeed(OUTPUT, "png")
    await deadline(first.done.wait())
    second, _ = await service.accept({"prompt": "second"})
    (await group.next_run()).succeed(OUTPUT, "png")  # 128 bytes wait for the writer: past 100
    await deadline(second.done.wait())
    assert second.state is JobState.SUCCEEDED  # answered from memory at once, as before
    third, _ = await service.accept({"prompt": "third"})
    await asyncio.to_thread(gate.holding.wait, 10)  # the writer is stuck at the first copy
    for _ in range(10):  # turns of the loop in which a group that did not wait would take it
        await asyncio.sleep(0)
    assert group.runs.empty()
    assert third.state is JobState.QUEUED
    gate.set()  # the writer catches up: the group goes on
    run = await group.next_run()
    assert run.job_id == third.id
    assert second.record.output_sha256 is not None  # its copy landed before the group went on
    run.succeed(OUTPUT, "png")
    await deadline(third.done.wait())


async def test_a_promise_made_while_the_copy_is_written_waits_for_it_in_the_journal(
    group: FakeGroup, gate: Gate, store: OutputStore, plugins: Plugins, settings: JobSettings, tmp_path: Path
) -> None:
    """A plugin's promise (``Jobs.promise``) is journaled with the job's record, and a success
    is journaled only once its copy is on disk: a promise made before must not write it early
    (a restart would find a success with no file), so it goes with the settled record."""
    predictor = as_predictor(EchoPredictor())
    journal = JobJournal(tmp_path / "jobs.sqlite3")
    service = JobService([group], store, plugins, predictor, InputSchema(predictor), settings, journal)
    await service.start()
    try:
        job, _ = await service.accept({"prompt": "small"})
        (await group.next_run()).succeed(OUTPUT, "png")
        await deadline(job.done.wait())
        service.promise(job.id, "a-plugin:final")
        await journal.committed()
        held = {record.id: record for record in journal.load()}[job.id]
        gate.set()
        await asyncio.to_thread(store.flush)
        await journal.committed()
        settled = {record.id: record for record in journal.load()}[job.id]
    finally:
        gate.set()
        settings.drain_timeout = 0
        await service.drain()
        await journal.close()

    assert (held.state, held.promises) == (JobState.RUNNING, ())  # as it was before it ended
    assert (settled.state, settled.promises) == (JobState.SUCCEEDED, ("a-plugin:final",))
    assert settled.output_sha256 is not None
