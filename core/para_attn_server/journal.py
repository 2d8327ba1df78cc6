"""Job records on disk (SQLite under the output directory), so a restarted server still
knows its jobs: finished outputs stay downloadable until their TTL, and jobs that were
queued or running when the server stopped report failed with 'server restarted'.

Writes are batched: a job's state changes mark it dirty and one transaction every
``flush_interval`` seconds writes them all, so recording costs the request path nothing.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec

if TYPE_CHECKING:
    from .jobs import Job

log = logging.getLogger("para_attn_server.journal")

COLUMNS = (
    "id", "state", "created_at", "started_at", "finished_at", "step", "total", "error",
    "file_type", "output_file", "output_path", "written_by_predictor", "fingerprint", "inputs",
)  # fmt: skip
SCHEMA = f"CREATE TABLE IF NOT EXISTS jobs ({', '.join(COLUMNS)}, PRIMARY KEY (id))"
UPSERT = f"INSERT OR REPLACE INTO jobs ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))})"


class JobJournal:
    def __init__(self, path: Path, flush_interval: float = 0.05) -> None:
        self.path = path
        self.flush_interval = flush_interval
        # One thread owns the connection: sqlite3 objects must stay on their thread.
        self._thread = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="journal")
        self._db = self._thread.submit(self._open).result()
        self._dirty: dict[str, Job] = {}
        self._deleted: set[str] = set()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def _open(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, check_same_thread=False)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        db.execute(SCHEMA)
        db.commit()
        return db

    def load(self) -> list[dict[str, Any]]:
        def read() -> list[dict[str, Any]]:
            cursor = self._db.execute(f"SELECT {', '.join(COLUMNS)} FROM jobs ORDER BY created_at")
            return [dict(zip(COLUMNS, row, strict=True)) for row in cursor]

        return self._thread.submit(read).result()

    def start(self) -> None:
        self._task = asyncio.create_task(self._flush_loop())

    def record(self, job: Job) -> None:
        self._dirty[job.id] = job
        self._deleted.discard(job.id)
        self._wake.set()

    def forget(self, job_id: str) -> None:
        self._dirty.pop(job_id, None)
        self._deleted.add(job_id)
        self._wake.set()

    async def _flush_loop(self) -> None:
        while True:
            await self._wake.wait()
            await asyncio.sleep(self.flush_interval)  # batch what arrives meanwhile
            self._wake.clear()
            await asyncio.get_running_loop().run_in_executor(self._thread, self._write, *self._take())

    def _take(self) -> tuple[list[tuple[Any, ...]], list[str]]:
        rows = [_row(job) for job in self._dirty.values()]
        deleted = list(self._deleted)
        self._dirty.clear()
        self._deleted.clear()
        return rows, deleted

    def _write(self, rows: list[tuple[Any, ...]], deleted: list[str]) -> None:
        try:
            with self._db:
                self._db.executemany(UPSERT, rows)
                self._db.executemany("DELETE FROM jobs WHERE id = ?", [(i,) for i in deleted])
        except sqlite3.Error:
            log.exception("could not write job records to %s", self.path)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await asyncio.get_running_loop().run_in_executor(self._thread, self._write, *self._take())
        self._thread.submit(self._db.close).result()
        self._thread.shutdown()


def _row(job: Job) -> tuple[Any, ...]:
    return (
        job.id, job.state.value, job.created_at, job.started_at, job.finished_at, job.step, job.total,
        job.error, job.file_type, str(job.output_file) if job.output_file else None, job.output_path,
        int(job.written_by_predictor), job.fingerprint, msgspec.msgpack.encode(job.inputs),
    )  # fmt: skip


def iter_rows(rows: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for row in rows:
        yield {**row, "inputs": msgspec.msgpack.decode(row["inputs"])}
