"""The Makefile installs torch again when TORCH changes, and only then: what ``make -n``
(print, run nothing) would do in a copy of the Makefile beside a made-up .venv."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests import REPO

pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
FORCE = "--force-reinstall --no-deps"


def dry_run(root: Path, *args: str) -> list[str]:
    """The recipe lines ``make -n serve`` prints; TORCH from ``args`` alone, not the environment."""
    env = {key: value for key, value in os.environ.items() if key not in ("TORCH", "MAKEFLAGS")}
    done = subprocess.run(
        ["make", "-n", "-C", str(root), "serve", *args], env=env, capture_output=True, text=True, check=True
    )
    return [line for line in done.stdout.splitlines() if not line.startswith("make")]


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """A copy of the Makefile beside a .venv installed with the default TORCH, up to date."""
    shutil.copy(REPO / "Makefile", tmp_path / "Makefile")
    (tmp_path / "core" / "client").mkdir(parents=True)
    (tmp_path / "pyproject.toml").touch()
    (tmp_path / "core" / "client" / "pyproject.toml").touch()
    (tmp_path / ".venv" / "bin").mkdir(parents=True)
    (tmp_path / ".venv" / "bin" / "activate").touch()
    (tmp_path / ".venv" / ".torch").write_text("torch==2.13.0\n")
    (tmp_path / ".venv" / ".installed").touch()
    later = (tmp_path / "pyproject.toml").stat().st_mtime + 10
    os.utime(tmp_path / ".venv" / ".installed", (later, later))
    return tmp_path


def test_the_same_torch_installs_nothing(root: Path) -> None:
    assert dry_run(root) == [".venv/bin/para-attn-server --num-devices 2"]
    assert dry_run(root, "TORCH=torch==2.13.0") == [".venv/bin/para-attn-server --num-devices 2"]


def test_another_torch_is_installed_over_the_one_there_and_recorded(root: Path) -> None:
    lines = dry_run(root, "TORCH=torch>=2.9")
    assert lines[0] == f'.venv/bin/python -m pip install -q {FORCE} "torch>=2.9"'
    assert lines[1] == '.venv/bin/python -m pip install -q "torch>=2.9"'
    assert "torch>=2.9" in lines[2]
    assert lines[2].endswith("> .venv/.torch")
    # the project itself is not installed again: only torch changed
    assert not any("-e core/client" in line for line in lines)
    assert lines[-1] == ".venv/bin/para-attn-server --num-devices 2"


def test_a_venv_without_a_record_installs_torch(root: Path) -> None:
    (root / ".venv" / ".torch").unlink()
    assert dry_run(root)[0] == f'.venv/bin/python -m pip install -q {FORCE} "torch==2.13.0"'


def test_the_record_is_what_the_recipe_writes(root: Path) -> None:
    # The recipe's printf, run: its file must compare equal to TORCH on the next run.
    (root / ".venv" / ".torch").unlink()
    printf = next(line for line in dry_run(root, "TORCH=torch>=2.9") if line.startswith("printf"))
    subprocess.run(printf, shell=True, cwd=root, check=True)
    assert dry_run(root, "TORCH=torch>=2.9") == [".venv/bin/para-attn-server --num-devices 2"]
