"""The original Flask server, read from the user's git copy of ParaAttention at run time.

Its code is never part of this repository: ``original_package`` reads the three modules the
server needs at one pinned commit out of a git directory named on the command line and
writes them into a temporary package, which the server script imports.
"""

from __future__ import annotations

import contextlib
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

REPOSITORY = "https://github.com/chengzeyi/ParaAttention"
COMMIT = "9021dff17bf16795ebc4c32b21c9eb319dbb8c34"
MODULES = ("server", "inference_worker", "logger_factory")
PACKAGE = "para_attn_original"  # the name the server script imports it by

HOW_TO_GET_IT = (
    f"the original server is read from a git copy of {REPOSITORY}: "
    f"`git clone {REPOSITORY} DIR`, then `python -m benchmarks --only compare --original-git DIR` "
    f"(it needs the bench extra: `pip install -e '.[bench]'`)"
)


class OriginalNotFoundError(RuntimeError):
    pass


def read_module(git_dir: Path, name: str) -> str:
    """One module of the original's ``src/para_attn/server`` package at ``COMMIT``."""
    spec = f"{COMMIT}:src/para_attn/server/{name}.py"
    result = subprocess.run(["git", "-C", str(git_dir), "show", spec], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise OriginalNotFoundError(f"git -C {git_dir} show {spec} failed: {result.stderr.strip()}\n{HOW_TO_GET_IT}")
    return result.stdout


@contextlib.contextmanager
def original_package(git_dir: str | Path) -> Iterator[Path]:
    """A temporary directory holding the package ``PACKAGE``; put it on PYTHONPATH."""
    sources = {name: read_module(Path(git_dir), name) for name in MODULES}
    with tempfile.TemporaryDirectory(prefix="para-attn-original-") as tmp:
        package = Path(tmp, PACKAGE)
        package.mkdir()
        # An empty __init__: the original's own one imports modules the server does not need.
        (package / "__init__.py").write_text("")
        for name, source in sources.items():
            (package / f"{name}.py").write_text(source)
        yield Path(tmp)
