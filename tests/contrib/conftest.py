"""Fixtures for the flux and wan predictors: tiny saved pipelines and 1-rank references.

The pipelines are saved by the helper users run (``para_attn_predictors.make_tiny``) and
loaded back through ``--model-path``, the path users take. A test module that compares
against one process declares ``REFERENCE = ReferenceRun(...)``; the ``reference`` fixture
computes every collected module's runs in one ``reference.py`` process (it must not be
this one: para-attn patches pipeline classes process-wide), started at first use so it
works while the servers' ranks load.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from para_attn_predictors import make_tiny
from tests.conftest import Server, server_env

HERE = Path(__file__).resolve().parent


@pytest.fixture(scope="session")
def tiny_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """``{"flux": DIR, "wan": DIR}``: tiny pipelines saved with ``save_pretrained``."""
    root = tmp_path_factory.mktemp("tiny-pipelines")
    dirs = {kind: root / kind for kind in ("flux", "wan")}
    for kind, path in dirs.items():
        assert make_tiny.main([kind, str(path)]) == 0
        assert (path / "model_index.json").is_file()
    return dirs


@dataclass(frozen=True)
class ReferenceRun:
    model: str
    options: dict[str, str]  # besides model_path
    requests: dict[str, dict[str, Any]]


class Reference:
    """The running ``reference.py``; ``array(model, name)`` waits for it on first use."""

    def __init__(self, runs: dict[str, dict[str, Any]], out_dir: Path) -> None:
        self.out_dir = out_dir
        self.log = out_dir / "reference.log"  # a file, so a chatty process never blocks on a pipe
        with self.log.open("w") as log:
            self.process = subprocess.Popen(
                [sys.executable, str(HERE / "reference.py"), str(out_dir)],
                stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=log, text=True, env=server_env(),
            )  # fmt: skip
        assert self.process.stdin is not None
        self.process.stdin.write(json.dumps(runs))
        self.process.stdin.close()

    def array(self, model: str, name: str) -> np.ndarray:
        code = self.process.wait(timeout=180)
        assert code == 0, self.log.read_text()[-4000:]
        return np.load(self.out_dir / model / f"{name}.npy")


@pytest.fixture(scope="session")
def reference(
    request: pytest.FixtureRequest, tiny_dirs: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> Reference:
    runs: dict[str, dict[str, Any]] = {}
    for module in {item.module for item in request.session.items if isinstance(item, pytest.Function)}:
        run = getattr(module, "REFERENCE", None)
        if isinstance(run, ReferenceRun):
            options = {"model_path": str(tiny_dirs[run.model]), **run.options}
            runs[run.model] = {"options": options, "requests": run.requests}
    return Reference(runs, tmp_path_factory.mktemp("reference"))


def cli_options(options: dict[str, str]) -> list[str]:
    return [arg for key, value in options.items() for arg in ("-o", f"{key}={value}")]


def npy(data: bytes) -> np.ndarray:
    return np.load(io.BytesIO(data))


def generate(server: Server, **fields: Any) -> bytes:
    response = server.http.post("/v1/jobs", params={"wait": 60}, json=fields)
    assert response.status_code == 201, response.text
    view = response.json()
    assert view["state"] == "succeeded", view
    return server.output(view["id"])


def assert_rejected(server: Server, fields: dict[str, Any], field: str) -> None:
    """A request with ``fields`` (beside a prompt) is a 400 whose message names ``field``."""
    response = server.http.post("/v1/jobs", json={"prompt": "a cat", **fields})
    assert response.status_code == 400
    assert response.json()["error"].startswith(f"{field}:")
