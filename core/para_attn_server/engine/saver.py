"""Where a finished job's output goes, and what happens when it cannot get there.

- A client's ``output_path``: written (atomically, durably, confined) before the job says
  succeeded; a failed write fails the job.
- Otherwise the server's own copy under the jobs directory, written behind so the answer
  does not wait on the disk; until then, and while memory allows, it is served from memory.
  Its record is journaled as succeeded only once the copy is on disk, with its size and
  checksum; a copy that cannot be written (a full disk) marks the output lost, so it is
  never served, and the job says why.

An output that came as base64 (``Output.base64``) is held as it came and decoded only for
the file, in the writer thread: the original API answers the text itself.
"""

from __future__ import annotations

import asyncio
import binascii
import logging
from collections.abc import Callable
from pathlib import Path

from para_attn_server.engine.registry import Job
from para_attn_server.errors import InputError
from para_attn_server.storage.outputs import Held, OutputCache, OutputStore

log = logging.getLogger("para_attn_server.jobs")

LOST = "the output was lost"


class OutputSaver:
    def __init__(
        self,
        store: OutputStore,
        cache: OutputCache,
        replies_with_output_path: bool,
        settled: Callable[[Job], None],
    ) -> None:
        self.store = store
        self.cache = cache
        self.replies_with_output_path = replies_with_output_path
        self._settled = settled  # a written-behind copy landed (or was lost): journal and tell

    async def save(
        self, job: Job, data: bytes, file_type: str, base64: bool = False
    ) -> tuple[str | None, bool, asyncio.Future[None] | None]:
        """Put the output where it belongs. Returns (why it failed or None, whether it is
        already durable, what the group must wait for before its next job or None); when it
        is not durable, ``settled(job)`` follows once it is (or is lost)."""
        record = job.record
        changes: dict[str, object] = {"file_type": file_type}
        held = Held(data, base64)
        if record.output_path is not None and record.output_file is not None:
            error = await self._write_now(job, Path(record.output_file), held, changes)
            if error is not None:
                return error, True, None
            durable = True
        else:  # written behind: durable once ``settled`` says so
            target = self.store.job_file(job.id, file_type)
            landed = self._write_behind(job, target, held)
            changes["output_file"] = str(target)
            durable = False
        self.cache.put(job.id, held)
        changes["reply_with_path"] = self.replies_with_output_path and record.output_path is not None
        job.record = record.evolve(**changes)
        # The writer is behind, and the outputs waiting for it (which the cache cannot let
        # go) are past --output-memory-bytes: the group's next job waits for this copy, so the
        # groups go no faster than the disk. Memory grew ~50 KiB a job without it.
        behind = landed if not durable and self.cache.size > self.cache.budget else None
        return None, durable, behind

    def _write_behind(self, job: Job, target: Path, held: Held) -> asyncio.Future[None]:
        """Queue the copy; the future resolves once it landed (or was lost)."""
        loop = asyncio.get_running_loop()
        landed: asyncio.Future[None] = loop.create_future()

        def done(size: int | None, digest: str | None, error: Exception | None) -> None:
            held.drop_raw()  # on disk now (or never): the text stays held, the bytes go
            held.pending = False
            loop.call_soon_threadsafe(self._written, job, size, digest, error, landed)

        # The writer decodes base64 once, in its thread; a binary download meanwhile shares it.
        held.pending = True
        self.store.write_behind(target, held.raw, done)
        return landed

    async def _write_now(self, job: Job, target: Path, held: Held, changes: dict[str, object]) -> str | None:
        path = job.record.output_path
        try:
            raw = await asyncio.to_thread(held.raw) if held.base64 else held.data
            digest = await asyncio.to_thread(self.store.write, target, raw)
        except binascii.Error as exc:
            return f"could not write the output to {path}: the predictor's base64 does not decode ({exc})"
        except InputError as exc:
            return f"could not write the output: {exc}"
        except OSError as exc:
            # The OS names the server's absolute path: log it, tell the client less.
            log.error("job %s: could not write %s: %s", job.id, target, exc)
            return f"could not write the output to {path}: {_reason(exc)}"
        held.drop_raw()
        changes.update(output_file=str(target), output_size=len(raw), output_sha256=digest)
        return None

    def _written(
        self, job: Job, size: int | None, digest: str | None, error: Exception | None, landed: asyncio.Future[None]
    ) -> None:
        landed.set_result(None)
        if error is None:
            job.record = job.record.evolve(output_size=size, output_sha256=digest)
        else:
            log.error("job %s: the server's copy of its output could not be written: %s", job.id, error)
            self.cache.forget(job.id)
            job.record = job.record.evolve(output_file=None, error=f"{LOST}: {_reason(error)}")
        self._settled(job)


def _reason(error: Exception) -> str:
    if isinstance(error, OSError):
        return error.strerror or type(error).__name__
    if isinstance(error, binascii.Error):
        return f"the predictor's base64 does not decode ({error})"
    return str(error)
