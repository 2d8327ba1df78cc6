"""The server's own copies of outputs, written behind the answers, in order, in batches.

One thread takes every write (and delete) queued so far and handles them as one batch:
each output goes to a temporary file, then every file is synced (the first sync commits
the file system's journal with the others' data, so the rest cost little), then each is
renamed into place and each directory synced once. A burst of small outputs costs a few
syncs, not three per output, and each output is still whole on disk before it is reported.
Once synced, a copy's pages leave the page cache (``Staged.uncache``).
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

from para_attn_server.errors import InputError

if TYPE_CHECKING:
    from para_attn_server.storage.outputs import OutputStore, Staged

log = logging.getLogger("para_attn_server.outputs")
MAX_BATCH = 64
WRITER_NICENESS = 10
Done = Callable[[int | None, str | None, Exception | None], None]


class _Write(NamedTuple):
    target: Path
    data: Callable[[], bytes]
    done: Done


class _Delete(NamedTuple):
    target: Path
    unlink: bool = True  # False: only forget that it was verified (a client's own path stays)


class BatchWriter:
    def __init__(self, store: OutputStore) -> None:
        self.store = store
        self._queue: queue.Queue[_Write | _Delete] = queue.Queue()
        threading.Thread(target=self._run, name="outputs", daemon=True).start()

    def write(self, target: Path, data: Callable[[], bytes], done: Done) -> None:
        """Queue a write; ``done(size, checksum, None)`` or ``done(None, None, error)`` runs in
        the writer thread once it is on disk (or failed)."""
        self._queue.put(_Write(target, data, done))

    def delete(self, target: Path, *, unlink: bool = True) -> None:
        # After its own write, which was queued before: a job forgotten while its write was
        # still queued must not leave the file (or its entry in the verified files) behind.
        self._queue.put(_Delete(target, unlink))

    def flush(self) -> None:
        """Return once everything queued so far is done."""
        self._queue.join()

    def pending(self) -> int:
        """Writes and deletes queued or being done now."""
        return self._queue.unfinished_tasks

    def _run(self) -> None:
        with contextlib.suppress(AttributeError, OSError):  # Linux: a thread has a nice value of its own
            # Behind the answers: on a busy host the copies wait, not the clients.
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), WRITER_NICENESS)
        while True:
            batch = [self._queue.get()]
            with contextlib.suppress(queue.Empty):
                while len(batch) < MAX_BATCH:
                    batch.append(self._queue.get_nowait())
            try:
                self._handle(batch)
            except Exception:  # a bug here must not stop the writer
                log.exception("the output writer failed on a batch")
            finally:
                for _ in batch:
                    self._queue.task_done()

    def _handle(self, batch: list[_Write | _Delete]) -> None:
        writes = [item for item in batch if isinstance(item, _Write)]
        staged: dict[int, Staged] = {}  # id(item) -> its file, written and synced
        for item in writes:
            try:
                staged[id(item)] = self.store.stage(item.target, item.data())
            except (OSError, InputError, ValueError) as exc:
                self._fail(item, exc)
        for item in writes:
            file = staged.get(id(item))
            if file is not None:
                try:
                    file.sync()
                    file.uncache()
                except OSError as exc:
                    file.discard()
                    file.close()
                    del staged[id(item)]
                    self._fail(item, exc)
        try:
            committed = self._commit(batch, staged)
        finally:
            for file in staged.values():
                file.close()
        for item, file in committed:
            item.done(file.size, file.digest, None)

    def _commit(self, batch: list[_Write | _Delete], staged: dict[int, Staged]) -> list[tuple[_Write, Staged]]:
        """Renames and deletes in queue order, then one sync per directory."""
        committed: list[tuple[_Write, Staged]] = []
        directories: dict[str, int] = {}
        for item in batch:
            if isinstance(item, _Delete):
                if item.unlink:
                    with contextlib.suppress(FileNotFoundError):
                        item.target.unlink()
                self.store.forget(item.target)
            elif (file := staged.get(id(item))) is not None:
                try:
                    file.commit()
                except OSError as exc:
                    self._fail(item, exc)
                    continue
                committed.append((item, file))
                directories.setdefault(str(file.target.parent), file.directory)
        try:
            for directory in directories.values():
                os.fsync(directory)
        except OSError as exc:
            for item, _ in committed:
                self._fail(item, exc)
            return []
        return committed

    def _fail(self, item: _Write, error: Exception) -> None:
        if isinstance(error, OSError):
            self.store.failed(error)
        item.done(None, None, error)
