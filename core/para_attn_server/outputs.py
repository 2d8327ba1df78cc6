"""Output files, confined to the server's output directory.

Clients may name an ``output_path``; it must be relative, free of ``..``, hidden components
and NUL bytes, and must not lead out of the directory through a symlink. Paths are checked
when the job is submitted (a 400, nothing written) and again when the file is written,
since the directory can change in between; the final write is an atomic rename, which
replaces a symlink planted at the target instead of following it.
"""

from __future__ import annotations

import concurrent.futures
import mimetypes
import os
import tempfile
from pathlib import Path, PurePosixPath

from .errors import InputError

JOBS_DIR = ".jobs"  # the server's own copies, hidden so no client path can name them
NAME_MAX = 255  # bytes in one path component on Linux, macOS and Windows file systems


def _file_mode() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


FILE_MODE = _file_mode()  # mkstemp creates 0600 files; outputs get the usual mode


class OutputStore:
    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root).resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        self.jobs_dir = self.root / JOBS_DIR
        self.jobs_dir.mkdir(exist_ok=True)
        self._writer = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="outputs")

    def confine(self, user_path: str, field: str = "output_path") -> Path:
        """Resolve a client-supplied path inside the output directory, or raise InputError."""
        if not user_path or "\x00" in user_path:
            raise InputError("must be a non-empty path without NUL bytes", field)
        if "\\" in user_path:
            raise InputError("must use '/' as separator", field)
        pure = PurePosixPath(user_path)
        if pure.is_absolute():
            raise InputError("must be relative to the server's output directory", field)
        if not pure.parts:
            raise InputError("must name a file", field)
        for part in pure.parts:
            if part == "..":
                raise InputError("must not contain '..'", field)
            if part.startswith("."):
                raise InputError("must not contain hidden path components", field)
            if len(os.fsencode(part)) > NAME_MAX:
                raise InputError(f"has a path component longer than {NAME_MAX} bytes", field)
        target = self.root.joinpath(*pure.parts)
        try:
            # realpath follows every symlink already on disk, including the final component.
            real = Path(os.path.realpath(target))
            if real != self.root and self.root not in real.parents:
                raise InputError("leads outside the server's output directory", field)
            if target.is_dir():
                raise InputError("names a directory", field)
        except OSError as exc:  # too long in all, a loop of symlinks ...: the OS's words, not its path
            raise InputError(f"is not a usable path ({exc.strerror or type(exc).__name__})", field) from None
        return target

    def write_behind(self, target: Path, data: bytes) -> concurrent.futures.Future[None]:
        """Write one of the server's own copies in the background, in submission order."""
        return self._writer.submit(self.write, target, data)

    def delete_behind(self, target: Path) -> None:
        self._writer.submit(target.unlink, missing_ok=True)

    def flush(self) -> None:
        """Wait until every write-behind is on disk (on shutdown)."""
        self._writer.shutdown(wait=True)
        self._writer = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="outputs")

    def job_file(self, job_id: str, file_type: str) -> Path:
        return self.jobs_dir / f"{job_id}.{file_type}"

    def write(self, target: Path, data: bytes) -> None:
        """Atomically write ``data`` to ``target`` (already confined)."""
        if target.parent == self.jobs_dir:
            # Our own directory, our own uuid names: no rename dance needed.
            with open(target, "wb") as f:
                f.write(data)
            return
        # Re-check: a symlink may have appeared since the job was submitted.
        self.confine(target.relative_to(self.root).as_posix())
        target.parent.mkdir(parents=True, exist_ok=True)
        self.confine_dir(target.parent)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".tmp-")
        try:
            os.fchmod(fd, FILE_MODE)
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def confine_dir(self, directory: Path) -> None:
        real = Path(os.path.realpath(directory))
        if real != self.root and self.root not in real.parents:
            raise InputError("leads outside the server's output directory", "output_path")

    def is_inside(self, path: str | os.PathLike[str]) -> bool:
        real = Path(os.path.realpath(path))
        return self.root in real.parents


def content_type(file_type: str) -> str:
    guessed, _ = mimetypes.guess_type(f"x.{file_type}")
    return guessed or "application/octet-stream"
