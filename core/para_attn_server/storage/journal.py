"""Job records on disk (SQLite under the output directory), so a restarted server still
knows its jobs: finished outputs stay downloadable until their TTL, and jobs that were
queued or running when the server stopped are queued again (see ``JobRegistry.recover``).

Writes are group commits: everything recorded during one turn of the event loop goes in
one transaction at the next turn (no timer), so an idle server commits at once and a busy
one batches. ``committed()`` waits for the transaction that holds everything recorded so
far: the HTTP layer answers a submit only after it. A commit to a file that was deleted (or
replaced) under the server succeeds, into an inode no restart will open: so ``committed()``
also checks that the path still names the file the journal writes, and fails when not.

The file is 0600 (it holds every prompt and webhook URL); SQLite gives its -wal and -shm
files the same mode.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import os
import sqlite3
from pathlib import Path

import msgspec

from para_attn_server.errors import JournalError
from para_attn_server.records import JobRecord
from para_attn_server.storage.modes import private_file

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
CHECKPOINT_BYTES = 16 << 20  # a log this large is checkpointed at once, not at the interval
_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(JobRecord)


class JobJournal:
    """The journal. Its connection lives on the event loop's thread: a commit in WAL mode
    with synchronous=NORMAL writes to the log without an fsync, which costs less than a
    hop to a thread and back; the checkpoints that do sync the database file run in a
    thread of their own, on a connection of their own, every ``checkpoint_interval`` s, and
    sooner when the log passed ``checkpoint_bytes``: its size is bounded, not its age only
    (at several hundred jobs a second, five seconds of commits were ~100 MiB of log)."""

    def __init__(self, path: Path, checkpoint_interval: float = 5.0, checkpoint_bytes: int = CHECKPOINT_BYTES) -> None:
        self.path = path
        self.checkpoint_interval = checkpoint_interval
        self.checkpoint_bytes = checkpoint_bytes
        self._log_path = path.with_name(f"{path.name}-wal")
        self._log_full = asyncio.Event()  # the log passed checkpoint_bytes: checkpoint now
        self._db = self._open()
        self._identity = _identity(os.stat(path))  # the file a restart will open
        self._dirty: dict[str, JobRecord] = {}
        self._deleted: set[str] = set()
        self._scheduled = False
        self._batch = 0  # transactions started
        self._waiters: dict[int, list[asyncio.Future[None]]] = {}  # transaction -> who awaits it
        self._failed: dict[int, str] = {}  # recent failed transactions: number -> why
        self._task: asyncio.Task[None] | None = None
        self._gone_logged = False

    def _open(self) -> sqlite3.Connection:
        private_file(self.path)
        for older in (self.path.with_name(f"{self.path.name}-wal"), self.path.with_name(f"{self.path.name}-shm")):
            if older.exists():  # left by a release that made them 0644
                private_file(older)
        db = sqlite3.connect(self.path, check_same_thread=False)
        db.execute("PRAGMA journal_mode=WAL")
        # In WAL mode a commit is in the log before it returns: it survives the process
        # being killed (not a power cut, which would need FULL and an fsync per commit).
        db.execute("PRAGMA synchronous=NORMAL")
        db.execute("PRAGMA wal_autocheckpoint=0")  # checkpoints run off the event loop
        columns = tuple(row[1] for row in db.execute("PRAGMA table_info(jobs)"))
        with db:
            if columns == V1_COLUMNS:
                _convert_v1(db)
            db.execute(SCHEMA)
        return db

    def load(self) -> list[JobRecord]:
        records = []
        for job_id, blob in self._db.execute("SELECT id, record FROM jobs"):
            try:
                records.append(_decoder.decode(blob))
            except msgspec.DecodeError as exc:
                log.warning("dropped the unreadable record of job %s: %s", job_id, exc)
        return records

    def start(self) -> None:
        self._task = asyncio.create_task(self._checkpoints())

    def record(self, record: JobRecord) -> None:
        self._dirty[record.id] = record
        self._deleted.discard(record.id)
        self._schedule()

    def forget(self, job_id: str) -> None:
        self._dirty.pop(job_id, None)
        self._deleted.add(job_id)
        self._schedule()

    async def committed(self) -> None:
        """Return once everything recorded before this call is in a finished transaction;
        JournalError if that transaction failed (a full disk, say)."""
        if not self._scheduled:
            target = self._batch  # nothing waits: the last transaction holds it all
        else:
            target = self._batch + 1  # the transaction that runs at the loop's next turn
            future = asyncio.get_running_loop().create_future()
            self._waiters.setdefault(target, []).append(future)
            await future
        if target in self._failed:
            raise JournalError(f"could not record the job: {self._failed[target]}")
        if (gone := self.gone()) is not None:
            raise JournalError(f"could not record the job: {gone}")

    def gone(self) -> str | None:
        """Why the journal's file is no longer where a restart would open it, or None."""
        try:
            here = _identity(os.stat(self.path))
        except OSError:
            here = None
        if here == self._identity:
            return None
        if not self._gone_logged:
            self._gone_logged = True
            log.error("the job journal %s was deleted or replaced: restart the server to record jobs again", self.path)
        return "the job journal's file was deleted or replaced (the server must be restarted)"

    def _schedule(self) -> None:
        # One transaction per turn of the event loop: what is recorded meanwhile joins it.
        if not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        self._scheduled = False
        records, deleted = self._take()
        self._batch += 1
        error = self._write(_rows(records), deleted)
        if error is not None:
            self._failed[self._batch] = error
            self._retry_later(records, deleted)
        elif not self._log_full.is_set() and self._log_bytes() > self.checkpoint_bytes:
            self._log_full.set()
        # Numbered in order, so the oldest come first: a failing disk costs no scan per flush.
        while self._failed and (oldest := next(iter(self._failed))) < self._batch - KEEP_FAILURES:
            del self._failed[oldest]
        for future in self._waiters.pop(self._batch, []):
            if not future.done():
                future.set_result(None)

    def _log_bytes(self) -> int:
        try:
            return self._log_path.stat().st_size
        except OSError:
            return 0

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
                if rows:
                    self._db.executemany(UPSERT, rows)
                if deleted:
                    self._db.executemany("DELETE FROM jobs WHERE id = ?", [(i,) for i in deleted])
        except sqlite3.Error as exc:
            log.error("could not write job records to %s: %s", self.path, exc)
            return str(exc)
        return None

    async def _checkpoints(self) -> None:
        loop = asyncio.get_running_loop()
        with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="journal") as thread:
            checkpointer = await loop.run_in_executor(thread, self._checkpoint_connection)
            try:
                while True:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._log_full.wait(), self.checkpoint_interval)
                    await loop.run_in_executor(thread, _checkpoint, checkpointer)
                    self._log_full.clear()  # commits during the checkpoint are measured again after it
            finally:
                # Closed on its own thread, after the checkpoint a cancel may have left running
                # there: closing a connection while another thread uses it crashes SQLite.
                thread.submit(checkpointer.close)

    def _checkpoint_connection(self) -> sqlite3.Connection:
        # It waits for a commit in progress (the busy timeout), never the other way round
        # for long: a commit waits only for the end of what TRUNCATE copies and syncs.
        return sqlite3.connect(self.path, check_same_thread=False, timeout=30)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._scheduled or self._dirty or self._deleted:
            self._flush()
        with contextlib.suppress(sqlite3.Error):
            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        self._db.close()


def _identity(info: os.stat_result) -> tuple[int, int]:
    return info.st_dev, info.st_ino


def _checkpoint(db: sqlite3.Connection) -> None:
    """Copy the log into the database, then start the log again from empty.

    A PASSIVE checkpoint alone never lets the log restart under steady writes (frames keep
    arriving while it copies, so it is never complete) and the log grew by ~30 KiB a job
    for good. So: PASSIVE first (the bulk, without blocking a writer), then TRUNCATE, which
    holds writers off only while it copies what arrived meanwhile and syncs, then empties
    the log: the log stays within one interval's writes."""
    try:
        db.execute("PRAGMA wal_checkpoint(PASSIVE)")
        busy, _, _ = db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
    except sqlite3.Error as exc:
        log.error("could not checkpoint the job journal: %s", exc)
        return
    if busy:  # a reader held an old snapshot: the next interval tries again
        log.debug("the job journal's log could not restart this time")


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
