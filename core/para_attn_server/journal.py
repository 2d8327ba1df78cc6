"""Job records on disk (SQLite under the output directory), so a restarted server still
knows its jobs: finished outputs stay downloadable until their TTL, and jobs that were
queued or running when the server stopped report failed with 'server restarted'.

Writes are group commits: records marked since the last transaction go in the next one,
which starts as soon as the previous one ends (no timer), so an idle server commits at once
and a busy one batches. ``committed()`` waits for the transaction that holds everything
recorded so far: the HTTP layer answers a submit only after it.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import sqlite3
from pathlib import Path

import msgspec

from .errors import JournalError
from .records import JobRecord

log = logging.getLogger("para_attn_server.journal")

# The state has a column of its own so that an operator can query the file with sqlite3.
SCHEMA = "CREATE TABLE IF NOT EXISTS jobs (id TEXT PRIMARY KEY, state TEXT NOT NULL, record BLOB NOT NULL)"
UPSERT = "INSERT OR REPLACE INTO jobs (id, state, record) VALUES (?, ?, ?)"
# The first release kept one column per field; its rows are converted once, on open.
V1_COLUMNS = (
    "id", "state", "created_at", "started_at", "finished_at", "step", "total", "error",
    "file_type", "output_file", "output_path", "written_by_predictor", "fingerprint", "inputs",
)  # fmt: skip

KEEP_FAILURES = 1000  # failed transactions remembered for their waiters
_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(JobRecord)


class JobJournal:
    def __init__(self, path: Path) -> None:
        self.path = path
        # One thread owns the connection: sqlite3 objects must stay on their thread.
        self._thread = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="journal")
        self._db = self._thread.submit(self._open).result()
        self._dirty: dict[str, JobRecord] = {}
        self._deleted: set[str] = set()
        self._wake = asyncio.Event()
        self._batch = 0  # number of the next transaction
        self._done = 0  # transactions finished
        self._finished = asyncio.Condition()
        self._failed: dict[int, str] = {}  # recent failed transactions: number -> why
        self._task: asyncio.Task[None] | None = None

    def _open(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, check_same_thread=False)
        db.execute("PRAGMA journal_mode=WAL")
        # In WAL mode a commit is in the log before it returns: it survives the process
        # being killed (not a power cut, which would need FULL and an fsync per commit).
        db.execute("PRAGMA synchronous=NORMAL")
        columns = tuple(row[1] for row in db.execute("PRAGMA table_info(jobs)"))
        with db:
            if columns == V1_COLUMNS:
                _convert_v1(db)
            db.execute(SCHEMA)
        return db

    def load(self) -> list[JobRecord]:
        def read() -> list[JobRecord]:
            records = []
            for job_id, blob in self._db.execute("SELECT id, record FROM jobs"):
                try:
                    records.append(_decoder.decode(blob))
                except msgspec.DecodeError as exc:
                    log.warning("dropped the unreadable record of job %s: %s", job_id, exc)
            return records

        return self._thread.submit(read).result()

    def start(self) -> None:
        self._task = asyncio.create_task(self._flush_loop())

    def record(self, record: JobRecord) -> None:
        self._dirty[record.id] = record
        self._deleted.discard(record.id)
        self._wake.set()

    def forget(self, job_id: str) -> None:
        self._dirty.pop(job_id, None)
        self._deleted.add(job_id)
        self._wake.set()

    async def committed(self) -> None:
        """Return once everything recorded before this call is in a finished transaction;
        JournalError if that transaction failed (a full disk, say)."""
        # What waits to be taken goes in the next transaction; what was taken is in the last.
        target = self._batch + 1 if self._dirty or self._deleted else self._batch
        async with self._finished:
            await self._finished.wait_for(lambda: self._done >= target)
        if target in self._failed:
            raise JournalError(f"could not record the job: {self._failed[target]}")

    async def _flush_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._wake.wait()
            self._wake.clear()
            records, deleted = self._take()
            self._batch += 1
            error = await loop.run_in_executor(self._thread, self._write, _rows(records), deleted)
            if error is not None:
                self._failed[self._batch] = error
                self._retry_later(records, deleted)
            for old in [batch for batch in self._failed if batch < self._batch - KEEP_FAILURES]:
                del self._failed[old]
            async with self._finished:
                self._done = self._batch
                self._finished.notify_all()

    def _take(self) -> tuple[list[JobRecord], list[str]]:
        records = list(self._dirty.values())
        deleted = list(self._deleted)
        self._dirty.clear()
        self._deleted.clear()
        return records, deleted

    def _retry_later(self, records: list[JobRecord], deleted: list[str]) -> None:
        """Put a failed transaction's changes back, behind anything newer, for the next one
        (which starts at the next change: no retry loop on a disk that stays full)."""
        for record in records:
            if record.id not in self._dirty and record.id not in self._deleted:
                self._dirty[record.id] = record
        self._deleted.update(job_id for job_id in deleted if job_id not in self._dirty)

    def _write(self, rows: list[tuple[str, str, bytes]], deleted: list[str]) -> str | None:
        try:
            with self._db:
                self._db.executemany(UPSERT, rows)
                self._db.executemany("DELETE FROM jobs WHERE id = ?", [(i,) for i in deleted])
        except sqlite3.Error as exc:
            log.error("could not write job records to %s: %s", self.path, exc)
            return str(exc)
        return None

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        records, deleted = self._take()
        await asyncio.get_running_loop().run_in_executor(self._thread, self._write, _rows(records), deleted)
        self._thread.submit(self._db.close).result()
        self._thread.shutdown()


def _rows(records: list[JobRecord]) -> list[tuple[str, str, bytes]]:
    return [(record.id, record.state.value, _encoder.encode(record)) for record in records]


def _convert_v1(db: sqlite3.Connection) -> None:
    """Rewrite a first-release journal's rows as records (in the caller's transaction)."""
    rows = [dict(zip(V1_COLUMNS, row, strict=True)) for row in db.execute(f"SELECT {', '.join(V1_COLUMNS)} FROM jobs")]
    db.execute("ALTER TABLE jobs RENAME TO jobs_v1")
    db.execute(SCHEMA)
    for row in rows:
        written_by_predictor = bool(row.pop("written_by_predictor"))
        row["inputs"] = msgspec.msgpack.decode(row["inputs"])
        row["reply_with_path"] = written_by_predictor and row["output_path"] is not None
        record = msgspec.convert(row, JobRecord)
        db.execute(UPSERT, (record.id, record.state.value, _encoder.encode(record)))
    db.execute("DROP TABLE jobs_v1")
    log.info("converted %d job record(s) from the first release's journal", len(rows))
