"""Where a finished job's output goes, and what happens when it cannot get there.

- A client's ``output_path``: written (atomically, durably, confined) before the job says
  succeeded; a failed write fails the job.
- Otherwise the server's own copy under the jobs directory, written behind so the answer
  does not wait on the disk; until then, and while memory allows, it is served from memory.
  Its record is journaled as succeeded only once the copy is on disk, with its size and
  checksum; a copy that cannot be written (a full disk) marks the output lost, so it is
  never served, and the job says why.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from pathlib import Path

from .errors import InputError
from .outputs import OutputCache, OutputStore
from .registry import Job

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

    async def save(self, job: Job, data: bytes, file_type: str) -> tuple[str | None, bool]:
        """Put ``data`` where it belongs. Returns (why it failed or None, whether it is
        already durable); when it is not, ``settled(job)`` follows once it is (or is lost)."""
        record = job.record
        reply_with_path = self.replies_with_output_path and record.output_path is not None
        if record.output_path is not None and record.output_file is not None:
            target = Path(record.output_file)
            try:
                digest = await asyncio.to_thread(self.store.write, target, data)
            except InputError as exc:
                return f"could not write the output: {exc}", True
            except OSError as exc:
                # The OS names the server's absolute path: log it, tell the client less.
                log.error("job %s: could not write %s: %s", job.id, target, exc)
                return f"could not write the output to {record.output_path}: {_reason(exc)}", True
            written = None
        else:
            target = self.store.job_file(job.id, file_type)
            loop = asyncio.get_running_loop()

            def done(found: str | None, error: Exception | None) -> None:
                loop.call_soon_threadsafe(self._written, job, found, error)

            written = self.store.write_behind(target, data, done)
            digest = None
        self.cache.put(job.id, data, written)
        job.record = record.evolve(
            file_type=file_type,
            output_file=str(target),
            output_size=len(data),
            output_sha256=digest,
            reply_with_path=reply_with_path,
        )
        return None, written is None

    def _written(self, job: Job, digest: str | None, error: Exception | None) -> None:
        if error is None:
            job.record = job.record.evolve(output_sha256=digest)
        else:
            log.error("job %s: the server's copy of its output could not be written: %s", job.id, error)
            self.cache.forget(job.id)
            job.record = job.record.evolve(output_file=None, error=f"{LOST}: {_reason(error)}")
        self._settled(job)


def _reason(error: Exception) -> str:
    if isinstance(error, OSError):
        return error.strerror or type(error).__name__
    return str(error)
