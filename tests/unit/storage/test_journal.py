"""journal.JobJournal: records survive in SQLite, a commit is awaited, old journals convert."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from pathlib import Path

import msgspec
import pytest

from para_attn_server.records import JobRecord, JobState
from para_attn_server.storage.journal import SCHEMA, V1_COLUMNS, JobJournal

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(30, method="thread")]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def record(job_id: str = "job-1", state: JobState = JobState.QUEUED) -> JobRecord:
    return JobRecord(id=job_id, inputs={"prompt": "a"}, fingerprint=b"f", created_at=time.time(), state=state)


def rows(path: Path) -> dict[str, str]:
    with sqlite3.connect(path) as db:
        return dict(db.execute("SELECT id, state FROM jobs").fetchall())


async def test_committed_returns_once_another_connection_sees_the_record(tmp_path: Path) -> None:
    journal = JobJournal(tmp_path / "jobs.sqlite3")
    journal.start()
    try:
        journal.record(record())
        await journal.committed()

        assert rows(journal.path) == {"job-1": "queued"}
    finally:
        await journal.close()


async def test_committed_with_nothing_pending_returns_at_once(tmp_path: Path) -> None:
    journal = JobJournal(tmp_path / "jobs.sqlite3")
    journal.start()
    try:
        await journal.committed()
    finally:
        await journal.close()


async def test_records_and_forgets_load_back_in_a_new_journal(tmp_path: Path) -> None:
    journal = JobJournal(tmp_path / "jobs.sqlite3")
    journal.start()
    journal.record(record("kept", JobState.SUCCEEDED))
    journal.record(record("gone"))
    await journal.committed()
    journal.forget("gone")
    await journal.close()

    loaded = JobJournal(tmp_path / "jobs.sqlite3").load()

    assert [(r.id, r.state) for r in loaded] == [("kept", JobState.SUCCEEDED)]


def test_an_unreadable_row_is_dropped_with_a_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "jobs.sqlite3"
    with sqlite3.connect(path) as db:
        db.execute(SCHEMA)
        db.execute("INSERT INTO jobs VALUES ('broken', 'queued', x'c1')")

    assert JobJournal(path).load() == []
    assert "broken" in caplog.text


def test_a_first_release_journal_is_converted(tmp_path: Path) -> None:
    path = tmp_path / "jobs.sqlite3"
    with sqlite3.connect(path) as db:
        db.execute(f"CREATE TABLE jobs ({', '.join(V1_COLUMNS)}, PRIMARY KEY (id))")
        db.execute(
            f"INSERT INTO jobs VALUES ({', '.join('?' * len(V1_COLUMNS))})",
            ("old", "succeeded", 1.0, 2.0, 3.0, 4, 4, None, "png", "/srv/out/a.png", "a.png", 1, b"f",
             msgspec.msgpack.encode({"prompt": "a"})),
        )  # fmt: skip

    (converted,) = JobJournal(path).load()

    assert (converted.id, converted.state, converted.finished_at) == ("old", JobState.SUCCEEDED, 3.0)
    assert (converted.inputs, converted.output_path, converted.reply_with_path) == ({"prompt": "a"}, "a.png", True)
    assert rows(path) == {"old": "succeeded"}


async def test_the_log_is_emptied_while_writes_go_on(tmp_path: Path) -> None:
    """Steady writes never leave a PASSIVE checkpoint complete, so the log never restarted
    and grew by every commit for good; the journal's checkpoints must empty it as it serves."""
    journal = JobJournal(tmp_path / "jobs.sqlite3", checkpoint_interval=0.02)
    journal.start()
    wal = tmp_path / "jobs.sqlite3-wal"
    sizes = []
    try:
        for n in range(3000):  # a commit after another, as a busy server's group commits come
            journal.record(record(f"job-{n}", JobState.SUCCEEDED))
            await journal.committed()
            sizes.append(wal.stat().st_size if wal.exists() else 0)
    finally:
        await journal.close()
    # Every commit adds at least a page (4 KiB): a log never emptied is over 8 MB by then.
    # The checkpoints (every 20 ms, a few hundred commits here) empty it again and again.
    assert min(sizes[-1000:]) < 512 * 1024, f"the log stayed at {min(sizes[-1000:])} bytes or more"
    assert len(rows(journal.path)) == 3000


async def test_a_log_past_its_size_is_checkpointed_before_the_interval(tmp_path: Path) -> None:
    """Five seconds of commits at several hundred jobs a second were ~100 MiB of log: the
    log's size starts a checkpoint too, not its age only (the interval here is an hour)."""
    limit = 256 * 1024
    journal = JobJournal(tmp_path / "jobs.sqlite3", checkpoint_interval=3600, checkpoint_bytes=limit)
    journal.start()
    wal = tmp_path / "jobs.sqlite3-wal"
    written = 0
    try:
        for _ in range(2):  # and again after the first: each time the log passes the limit
            while (size := wal.stat().st_size if wal.exists() else 0) <= limit:
                journal.record(record(f"job-{written}", JobState.SUCCEEDED))
                await journal.committed()
                written += 1
            # No more writes: the checkpoint the size started empties the log.
            async with asyncio.timeout(10):
                while wal.stat().st_size >= size:  # noqa: ASYNC110 (a file the checkpoint thread empties)
                    await asyncio.sleep(0.01)
    finally:
        await journal.close()
    assert len(rows(journal.path)) == written
