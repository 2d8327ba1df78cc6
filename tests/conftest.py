"""Shared fixtures: real servers started through the CLI (``para_attn_server.testing``).

Rank processes import ``tests.predictors``, so the repository root goes on the PYTHONPATH of
every process the tests start.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from pytest_httpserver import HTTPServer

from para_attn_predictors import make_tiny
from para_attn_server.testing import Server
from tests import REPO
from tests.webhook_receiver import Receiver, receiver_server

os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))


@pytest.fixture(scope="module")
def launch(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """``launch(*cli_args, wait_ready=True)`` starts a server; all stop after the module."""
    servers: list[Server] = []

    def start(*args: str, wait_ready: bool = True) -> Server:
        server = Server(list(args), tmp_path_factory.mktemp("server"), wait_ready=wait_ready)
        servers.append(server)
        return server

    yield start
    for server in servers:  # drain them all at once
        server.terminate()
    for server in servers:
        server.close()


@pytest.fixture(scope="module")
def receiving() -> Iterator[HTTPServer]:
    """A real webhook receiver (pytest-httpserver) on loopback, one per module."""
    with receiver_server() as server:
        yield server


@pytest.fixture
def receiver(receiving: HTTPServer) -> Receiver:
    """What ``receiving`` got, starting empty for each test."""
    return Receiver(receiving)


@pytest.fixture(scope="session")
def tiny_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """The default model (a real tiny Flux pipeline split by para-attn) on 2 ranks, shared
    by every module that only submits ordinary jobs to it."""
    server = Server(["--model", "tiny", "--num-devices", "2"], tmp_path_factory.mktemp("tiny"))
    yield server
    server.close()


@pytest.fixture(scope="session")
def tiny_pipeline(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    """``tiny_pipeline("flux" | "wan")``: the directory of a tiny pipeline saved by the helper
    users run (``python -m para_attn_predictors.make_tiny KIND DIR``), made once per session
    on first use, for ``--model KIND --model-path DIR``."""
    root = tmp_path_factory.mktemp("tiny-pipelines")
    made: dict[str, Path] = {}

    def path(kind: str) -> Path:
        if kind not in made:
            assert make_tiny.main([kind, str(root / kind)]) == 0
            assert (root / kind / "model_index.json").is_file()
            made[kind] = root / kind
        return made[kind]

    return path
