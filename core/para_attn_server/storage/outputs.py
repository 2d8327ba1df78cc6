"""Output files, confined to the server's output directory, and recent outputs in memory.

Clients may name an ``output_path``; it must be relative, free of ``..``, hidden components,
NUL bytes and symlinks. Paths are checked when the job is submitted (a 400, nothing written)
and the write itself walks the directories with file descriptors that refuse symlinks, so a
link planted in between cannot steer it (no check-then-use race). Every write is a temporary
file, fsync, rename and a directory fsync: a file is either whole or absent. Files and
directories get the modes of ``storage/modes.py``: none is readable by the machine's other users.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import mimetypes
import os
import secrets
import stat
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from pathlib import Path, PurePosixPath

from para_attn_server import b64
from para_attn_server.errors import InputError, OutputGoneError
from para_attn_server.storage.modes import DIR_MODE, FILE_MODE, _file_mode, make_private  # noqa: F401 (tests)
from para_attn_server.storage.writer import BatchWriter

JOBS_DIR = ".jobs"  # the server's own copies, hidden so no client path can name them
NAME_MAX = 255  # bytes in one path component on Linux, macOS and Windows file systems
FIELD = "output_path"
OUTSIDE = "leads outside the server's output directory"
SYMLINKED = "must not go through a symlink (the server never writes through one)"
FAILURE_MEMORY = 30.0  # seconds a failed write keeps readiness down (then the probe decides)
PROBE_BYTES = 64 * 1024
READ_CHUNK = 3 * 1024 * 1024  # a multiple of 3: chunks encode to base64 without padding between them
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)


def checksum(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class OutputStore:
    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root).resolve()
        self.jobs_dir = self.root / JOBS_DIR
        make_private(self.jobs_dir)
        self._writer = BatchWriter(self)
        self._verified: dict[str, tuple[int, str]] = {}  # path -> (size, checksum) known to be on disk
        self._failure: tuple[float, str] | None = None  # (when, why) the last own write failed

    # ---- client paths -------------------------------------------------------------------

    def confine(self, user_path: str, field: str = FIELD) -> Path:
        """The file a client-supplied path names inside the output directory, or InputError."""
        parts = _parts(user_path, field)
        target = self.root.joinpath(*parts)
        try:
            real = Path(os.path.realpath(target))  # follows every symlink already on disk
            if real != self.root and self.root not in real.parents:
                raise InputError(OUTSIDE, field)
            with self._directory(parts[:-1], create=False, field=field, refusal=SYMLINKED) as fd:
                if fd is not None:
                    _check_target(fd, parts[-1], field, SYMLINKED)
        except OSError as exc:  # too long in all ...: the OS's words, not its path
            raise InputError(f"is not a usable path ({exc.strerror or type(exc).__name__})", field) from None
        return target

    def relative(self, target: Path) -> tuple[str, ...]:
        """``target``'s components below the root (a path ``confine`` or ``job_file`` gave)."""
        return target.relative_to(self.root).parts

    # ---- writing ------------------------------------------------------------------------

    def write(self, target: Path, data: bytes) -> str:
        """Atomically and durably write ``data`` to ``target`` (inside the root), creating its
        directories; returns the data's checksum. InputError if the way there or the target
        is a symlink or a directory."""
        staged = self.stage(target, data)
        try:
            staged.sync()
            staged.commit()
            os.fsync(staged.directory)
        finally:
            staged.close()
        return staged.digest

    def stage(self, target: Path, data: bytes) -> Staged:
        """``data`` in a temporary file beside ``target``, not yet synced nor in place: the
        first half of a write, so that a batch of writes can share their syncs."""
        parts = self.relative(target)
        with self._directory(parts[:-1], create=True, field=FIELD) as fd:
            assert fd is not None
            _check_target(fd, parts[-1], FIELD, OUTSIDE)
            directory = os.dup(fd)
        try:
            tmp, fd = _write_temporary(directory, data)
        except BaseException:
            os.close(directory)
            raise
        return Staged(self, target, directory, tmp, fd, parts[-1], len(data), checksum(data))

    def write_behind(
        self,
        target: Path,
        data: Callable[[], bytes],
        done: Callable[[int | None, str | None, Exception | None], None],
    ) -> None:
        """Write one of the server's own copies in the background, in submission order: ``data()``
        gives the bytes in the writer thread, then ``done(size, checksum, error)`` runs there."""
        self._writer.write(target, data, done)

    def delete_behind(self, target: Path, *, unlink: bool = True) -> None:
        """After the writes queued before: delete ``target`` (or only forget it, ``unlink`` False)."""
        self.forget(target)
        self._writer.delete(target, unlink=unlink)

    def forget(self, target: Path) -> None:
        """Stop remembering that ``target`` was verified (its job is forgotten)."""
        self._verified.pop(str(target), None)

    def remember(self, target: Path, size: int, digest: str) -> None:
        self._verified[str(target)] = (size, digest)

    def failed(self, error: OSError) -> None:
        """A write of the server's own failed (readiness reports it for a while)."""
        self._failure = (time.monotonic(), error.strerror or type(error).__name__)

    def flush(self) -> None:
        """Wait until every write-behind is on disk (on shutdown)."""
        self._writer.flush()

    def pending(self) -> int:
        """Write-behinds and deletions not yet done: a backlog that stays up is a slow disk."""
        return self._writer.pending()

    def job_file(self, job_id: str, file_type: str) -> Path:
        return self.jobs_dir / f"{job_id}.{file_type}"

    # ---- reading ------------------------------------------------------------------------

    def open(self, target: Path) -> int:
        """A read-only descriptor of ``target``, refusing symlinks on the way; OSError if gone."""
        parts = self.relative(target)
        with self._directory(parts[:-1], create=False, field=FIELD) as fd:
            if fd is None:
                raise FileNotFoundError(target)
            return os.open(parts[-1], os.O_RDONLY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0), dir_fd=fd)

    def open_checked(self, target: Path, size: int | None, digest: str | None) -> int:
        """A descriptor of ``target`` at its start, once it is known to hold what was written
        (its size always; its checksum once per process), else OutputGoneError saying what
        is wrong. Blocking."""
        if size is None or digest is None:
            raise OutputGoneError("the server stopped before it was saved")
        try:
            fd = self.open(target)
        except (OSError, InputError):
            raise OutputGoneError("its file is missing") from None
        try:
            if os.fstat(fd).st_size != size:
                raise OutputGoneError("its file changed on disk since it was written")
            if self._verified.get(str(target)) != (size, digest):
                hasher = hashlib.sha256()
                while chunk := os.read(fd, READ_CHUNK):
                    hasher.update(chunk)
                if hasher.hexdigest() != digest:
                    raise OutputGoneError("its file changed on disk since it was written")
                self._verified[str(target)] = (size, digest)
                os.lseek(fd, 0, os.SEEK_SET)
        except BaseException:
            os.close(fd)
            raise
        return fd

    def writable(self) -> str | None:
        """None when outputs can be written now, else why not: a write failed in the last
        ``FAILURE_MEMORY`` seconds (a full disk), or a small probe file cannot be written."""
        failed = self._failure
        if failed is not None and time.monotonic() - failed[0] < FAILURE_MEMORY:
            return f"a write failed {time.monotonic() - failed[0]:.0f} s ago ({failed[1]})"
        probe = self.jobs_dir / f".probe-{secrets.token_hex(4)}"
        try:
            fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                os.write(fd, bytes(PROBE_BYTES))
            finally:
                os.close(fd)
                probe.unlink()
        except OSError as exc:
            return exc.strerror or type(exc).__name__
        return None

    # ---- internals ----------------------------------------------------------------------

    @contextlib.contextmanager
    def _directory(
        self, parts: tuple[str, ...], *, create: bool, field: str, refusal: str = OUTSIDE
    ) -> Iterator[int | None]:
        """A descriptor of root/parts, walked one component at a time without following a
        symlink (InputError ``refusal`` on one); None when a component does not exist (and
        ``create`` is False)."""
        fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | getattr(os, "O_CLOEXEC", 0))
        try:
            for part in parts:
                try:
                    child = os.open(part, _DIR_FLAGS, dir_fd=fd)
                except FileNotFoundError:
                    if not create:
                        yield None
                        return
                    with contextlib.suppress(FileExistsError):
                        os.mkdir(part, DIR_MODE, dir_fd=fd)
                    child = _open_child_dir(fd, part, field, refusal)
                except OSError as exc:
                    raise _not_a_plain_directory(fd, part, exc, field, refusal) from None
                os.close(fd)
                fd = child
            yield fd
        finally:
            os.close(fd)


def _parts(user_path: str, field: str) -> tuple[str, ...]:
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
    return pure.parts


def _open_child_dir(fd: int, part: str, field: str, refusal: str) -> int:
    try:
        return os.open(part, _DIR_FLAGS, dir_fd=fd)
    except OSError as exc:
        raise _not_a_plain_directory(fd, part, exc, field, refusal) from None


def _not_a_plain_directory(fd: int, part: str, exc: OSError, field: str, refusal: str) -> Exception:
    if exc.errno not in (errno.ELOOP, errno.ENOTDIR):
        return exc
    try:
        mode = os.stat(part, dir_fd=fd, follow_symlinks=False).st_mode
    except OSError:
        return exc
    if stat.S_ISLNK(mode):  # O_NOFOLLOW refused it
        return InputError(refusal, field)
    return FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST))  # a file where a directory goes


def _check_target(fd: int, name: str, field: str, refusal: str) -> None:
    try:
        info = os.stat(name, dir_fd=fd, follow_symlinks=False)
    except FileNotFoundError:
        return
    if stat.S_ISLNK(info.st_mode):
        raise InputError(refusal, field)
    if stat.S_ISDIR(info.st_mode):
        raise InputError("names a directory", field)


def _write_temporary(directory: int, data: bytes) -> tuple[str, int]:
    """``data`` in a new temporary file of ``directory``, with the usual mode: its name and
    its descriptor (open, to sync it later)."""
    tmp = f".tmp-{secrets.token_hex(8)}"
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
    out = os.open(tmp, flags, 0o600, dir_fd=directory)
    try:
        os.fchmod(out, FILE_MODE)  # exactly the usual mode, whatever the umask is now
        with memoryview(data) as view:
            written = 0
            while written < len(view):
                written += os.write(out, view[written:])
    except BaseException:
        os.close(out)
        with contextlib.suppress(OSError):
            os.unlink(tmp, dir_fd=directory)
        raise
    return tmp, out


class Staged:
    """A written but not yet durable output: ``sync`` its data, ``commit`` it into place
    (rename: it replaces a symlink planted at the target itself, never writing through
    one), then sync ``directory`` (once for a batch in one directory), then ``close``."""

    def __init__(
        self, store: OutputStore, target: Path, directory: int, tmp: str, fd: int, name: str, size: int, digest: str
    ) -> None:
        self.store, self.target, self.directory, self.fd = store, target, directory, fd
        self.tmp, self.name, self.size, self.digest = tmp, name, size, digest

    def sync(self) -> None:
        os.fsync(self.fd)

    def uncache(self) -> None:
        """Drop the synced data from the page cache. The server serves a recent output from
        its own memory, so the cache would hold it twice; and the next copy's write reuses
        these pages instead of fresh ones, which a VM's first touch makes costly
        (``python -m benchmarks.profile native-16m``; benchmarks/README.md)."""
        with contextlib.suppress(AttributeError, OSError):  # no posix_fadvise on macOS
            os.posix_fadvise(self.fd, 0, 0, os.POSIX_FADV_DONTNEED)

    def commit(self) -> None:
        try:
            os.rename(self.tmp, self.name, src_dir_fd=self.directory, dst_dir_fd=self.directory)
        except BaseException:
            self.discard()
            raise
        self.store.remember(self.target, self.size, self.digest)

    def discard(self) -> None:
        with contextlib.suppress(OSError):
            os.unlink(self.tmp, dir_fd=self.directory)

    def close(self) -> None:
        os.close(self.fd)
        os.close(self.directory)


class Held:
    """An output held in memory: its bytes, or its base64 text when ``base64``.

    ``raw()`` decodes base64 text once for whoever asks first (the copy's writer, a binary
    download) and keeps the bytes until ``drop_raw()`` (the copy is on disk)."""

    __slots__ = ("_lock", "_raw", "base64", "data", "pending")

    def __init__(self, data: bytes, base64: bool = False) -> None:
        self.data = data
        self.base64 = base64
        self.pending = False  # its copy is being written behind: memory is its only home
        self._raw: bytes | None = None
        self._lock = threading.Lock()

    def raw(self) -> bytes:
        if not self.base64:
            return self.data
        with self._lock:
            if self._raw is None:
                self._raw = b64.decode(self.data)
            return self._raw

    def drop_raw(self) -> None:
        self._raw = None


class OutputCache:
    """Recent outputs served from memory, within a budget of bytes in all.

    The oldest go first once the budget is exceeded, but never one whose file is still
    being written behind (it would have nowhere else to be served from).
    """

    def __init__(self, budget: int) -> None:
        self.budget = budget
        self.size = 0
        self._entries: OrderedDict[str, Held] = OrderedDict()

    def put(self, job_id: str, held: Held) -> None:
        self.forget(job_id)
        self._entries[job_id] = held
        self.size += len(held.data)
        while self.size > self.budget and self._entries:
            oldest, entry = next(iter(self._entries.items()))
            if entry.pending:
                break
            self.forget(oldest)

    def get(self, job_id: str) -> Held | None:
        return self._entries.get(job_id)

    def forget(self, job_id: str) -> None:
        entry = self._entries.pop(job_id, None)
        if entry is not None:
            self.size -= len(entry.data)


def content_type(file_type: str) -> str:
    guessed, _ = mimetypes.guess_type(f"x.{file_type}")
    return guessed or "application/octet-stream"
