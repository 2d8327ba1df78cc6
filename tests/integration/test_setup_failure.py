"""A predictor whose setup() raises makes the server exit non-zero, naming the error."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from para_attn_server.testing import CLI, Server, server_env

pytestmark = pytest.mark.timeout(120)


@pytest.mark.parametrize(
    ("model", "error"),
    [
        ("tests.predictors:SetupRaises", "RuntimeError: setup exploded on purpose"),
        ("tests.predictors:LegacySetupRaises", "RuntimeError: legacy setup exploded on purpose"),
    ],
)
def test_setup_error_exits_non_zero_and_names_the_error(tmp_path: Path, model: str, error: str) -> None:
    server = Server(["--model", model, "--num-devices", "2"], tmp_path, wait_ready=False)
    try:
        code = server.process.wait(90)
    finally:
        server.kill()
    server.log.wait_closed(10)
    assert code == 1
    assert re.search(rf"^para-attn-server: setup failed: setup failed on rank [01]: {error}$", server.log.text, re.M)
    assert "ready:" not in server.log.text


def test_unknown_model_exits_with_a_configuration_error(tmp_path: Path) -> None:
    done = subprocess.run(
        [str(CLI), "--model", "tests.predictors:NoSuchClass", "--port", "0"],
        cwd=tmp_path, env=server_env(), capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 2
    assert "has no attribute 'NoSuchClass'" in done.stderr
