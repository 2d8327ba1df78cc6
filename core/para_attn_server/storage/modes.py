"""Who may read what the server keeps: nothing is for the machine's other users.

Outputs are 0640 and the directories made for them 0750 (less under a stricter umask): the
server's group may read them, as a web server or a sidecar of the operator's might. The
private directory ``.jobs`` (the journal, with every prompt and webhook URL; the server's
copies; the input pictures) is 0700, and the journal's files 0600, tightened at start when
an older release or a loose umask left them open.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path


def _file_mode() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return 0o640 & ~umask


FILE_MODE = _file_mode()  # 0640 under the umask at start
DIR_MODE = 0o750  # under the umask, as mkdir applies it
PRIVATE_DIR_MODE = 0o700
PRIVATE_FILE_MODE = 0o600


def make_private(directory: Path) -> None:
    """Make ``directory`` (and the output directory above it) if missing, 0700 in any case."""
    directory.parent.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
    directory.mkdir(mode=PRIVATE_DIR_MODE, exist_ok=True)
    if stat.S_IMODE(directory.stat().st_mode) != PRIVATE_DIR_MODE:
        directory.chmod(PRIVATE_DIR_MODE)


def private_file(path: Path) -> None:
    """Create ``path`` if missing, 0600 in any case (before SQLite opens it: it makes its -wal
    and -shm files with the database file's mode)."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, PRIVATE_FILE_MODE)
    try:
        if stat.S_IMODE(os.fstat(fd).st_mode) != PRIVATE_FILE_MODE:
            os.fchmod(fd, PRIVATE_FILE_MODE)
    finally:
        os.close(fd)
