"""One server per output directory: an exclusive lock, taken before the journal is opened.

Two servers on one directory would each take the other's running jobs for an earlier run's
leftovers (and fail them "server restarted") and write one journal. The lock is ``flock`` on
``.jobs/server.lock``: the kernel drops it when the process ends however it ends, so a crash
leaves no stale lock; the file keeps the holder's pid for the refusal's message. Its
descriptor is close-on-exec, so rank processes never hold it. Taken first, it makes the
private directory (0700) and the output directory above it.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from para_attn_server.errors import ConfigurationError
from para_attn_server.storage.modes import PRIVATE_FILE_MODE, make_private
from para_attn_server.storage.outputs import JOBS_DIR

LOCK_FILE = "server.lock"


class OutputDirLock:
    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.path = Path(root).resolve() / JOBS_DIR / LOCK_FILE
        self._fd: int | None = None

    def acquire(self) -> None:
        """Hold the directory; ``ConfigurationError`` naming the holder when a server does."""
        try:
            make_private(self.path.parent)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, PRIVATE_FILE_MODE)
        except OSError as exc:
            raise ConfigurationError(f"--output-dir {self.path.parent.parent}: {exc.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise ConfigurationError(
                f"--output-dir {self.path.parent.parent}: another server (pid {holder}) is using it; "
                "give each server a directory of its own"
            ) from None
        os.fchmod(fd, PRIVATE_FILE_MODE)  # an older release made it 0644
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # the lock goes with the descriptor
            self._fd = None
