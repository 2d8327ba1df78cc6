"""Jobs' input pictures and videos, kept durably beside their records until they are forgotten.

A job's inputs are written (temporary file, fsync, rename, directory fsync; no symlink
followed) before its record is committed to the journal, so a job that was acknowledged
finds them after a crash. Each lives at ``<private dir>/inputs/<job id>/<sha256>`` and is
checked against that checksum when it is read for the ranks.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import shutil
from pathlib import Path

from para_attn_server.storage.outputs import OutputStore

log = logging.getLogger("para_attn_server.jobs")

INPUTS_DIR = "inputs"


class InputGoneError(Exception):
    """An input's bytes are missing or no longer match their checksum."""


class InputStore:
    def __init__(self, store: OutputStore) -> None:
        self.store = store
        self.root = store.jobs_dir / INPUTS_DIR
        self._deleting: set[asyncio.Future[None]] = set()

    def path(self, job_id: str, sha256: str) -> Path:
        return self.root / job_id / sha256

    def save(self, job_id: str, blobs: dict[str, bytes]) -> None:
        """Write each of a job's inputs, keyed by SHA-256, durably. Blocking."""
        for sha256, data in blobs.items():
            self.store.write(self.path(job_id, sha256), data)

    def read(self, job_id: str, sha256: str) -> bytes:
        """One input's bytes, checked; InputGoneError if missing or changed. Blocking."""
        try:
            fd = self.store.open(self.path(job_id, sha256))
        except OSError:
            raise InputGoneError("its input is gone from the server's disk") from None
        with os.fdopen(fd, "rb") as file:
            data = file.read()
        if hashlib.sha256(data).hexdigest() != sha256:
            raise InputGoneError("its input on the server's disk no longer matches what was accepted")
        return data

    def delete(self, job_id: str) -> None:
        """Remove a job's inputs (its record is forgotten). Blocking."""
        shutil.rmtree(self.root / job_id, ignore_errors=True)

    def delete_behind(self, job_id: str) -> None:
        """``delete`` in a worker thread when called on the event loop (expiry forgets jobs
        there); ``settled()`` waits for those under way."""
        try:
            deleting = asyncio.get_running_loop().run_in_executor(None, self.delete, job_id)
        except RuntimeError:  # no loop: a test, or shutdown
            self.delete(job_id)
            return
        self._deleting.add(deleting)
        deleting.add_done_callback(self._deleting.discard)

    async def settled(self) -> None:
        await asyncio.gather(*self._deleting)

    def sweep(self, known: set[str]) -> int:
        """Remove the inputs of jobs that have no record (a crash between the two writes);
        how many jobs' inputs went. Blocking, at start."""
        if not self.root.is_dir():
            return 0
        stale = [entry for entry in self.root.iterdir() if entry.name not in known]
        for entry in stale:
            shutil.rmtree(entry, ignore_errors=True)
        if stale:
            log.info("removed the inputs of %d job(s) the journal does not know", len(stale))
        return len(stale)
