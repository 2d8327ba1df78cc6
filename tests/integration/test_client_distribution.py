"""The client distribution (core/client) installed alone into an empty venv: no torch there,
and its ``para-attn-client generate`` runs a job on a real server and writes the output."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from para_attn_server.testing import Server
from tests import REPO

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def client_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An empty venv (not even pip) with the client installed from a copy of core/client
    (the build writes into its source), through this interpreter's pip and its cache."""
    root = tmp_path_factory.mktemp("client-venv")
    source = shutil.copytree(
        REPO / "core" / "client", root / "source", ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__")
    )
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=60)
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install", "--quiet", str(source)],
        check=True, timeout=240,
    )  # fmt: skip
    return venv


def alone(*command: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``command`` in this environment without what would let the venv see the
    checkout (PYTHONPATH) or an API key."""
    drop = {"PYTHONPATH", "PARA_ATTN_SERVER_API_KEY", "VIRTUAL_ENV"}
    env = {**{k: v for k, v in os.environ.items() if k not in drop}, "PYTHONNOUSERSITE": "1"}
    return subprocess.run(
        [str(part) for part in command], check=False, cwd=cwd, env=env, capture_output=True, text=True, timeout=120
    )


def test_the_venv_has_the_client_and_no_torch(client_venv: Path) -> None:
    python = client_venv / "bin" / "python"
    for module in ("torch", "diffusers", "litestar", "pluggy", "para_attn_server"):
        assert alone(python, "-c", f"import {module}").returncode != 0, f"{module} is importable in the client's venv"
    imported = alone(python, "-c", "import para_attn_client")
    assert imported.returncode == 0, imported.stderr


def test_its_generate_writes_what_the_server_returns(client_venv: Path, launch, tmp_path: Path) -> None:
    server: Server = launch("--model", "noop")
    job_id = str(uuid.uuid4())
    target = tmp_path / "out.bin"

    done = alone(
        client_venv / "bin" / "para-attn-client", "generate", server.url, "-p", "size=2000", "-p", "steps=2",
        "--id", job_id, "-o", target, "-q", cwd=tmp_path,
    )  # fmt: skip

    assert done.returncode == 0, done.stderr
    assert f"job {job_id} succeeded" in done.stdout
    assert len(target.read_bytes()) == 2000
    assert target.read_bytes() == server.output(job_id)
