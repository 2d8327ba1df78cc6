"""One server per output directory: the lock refuses a second holder, names the first, and
is gone with its holder however that ends."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from para_attn_server.errors import ConfigurationError
from para_attn_server.storage.dirlock import OutputDirLock


def test_a_second_holder_is_refused_naming_the_first_until_it_lets_go(tmp_path: Path) -> None:
    first, second = OutputDirLock(tmp_path / "out"), OutputDirLock(tmp_path / "out")
    first.acquire()

    with pytest.raises(ConfigurationError, match=rf"another server \(pid {os.getpid()}\) is using it"):
        second.acquire()
    first.release()
    second.acquire()  # free again
    second.release()


def test_a_holder_that_dies_leaves_no_stale_lock(tmp_path: Path) -> None:
    holder = (
        "import os, sys; from para_attn_server.storage.dirlock import OutputDirLock; "
        f"OutputDirLock({str(tmp_path)!r}).acquire(); os._exit(0)"  # no release: the kernel drops it
    )
    subprocess.run([sys.executable, "-c", holder], check=True)

    lock = OutputDirLock(tmp_path)
    lock.acquire()
    lock.release()


def test_an_output_directory_that_cannot_be_made_is_a_configuration_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")

    with pytest.raises(ConfigurationError, match=r"--output-dir .*file/sub"):
        OutputDirLock(tmp_path / "file" / "sub").acquire()
