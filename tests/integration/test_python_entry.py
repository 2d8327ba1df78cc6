"""The original's Python entry, ``ParaAttentionServer(predictor, host, port, num_devices).run()``,
serves the predictor *instance* it is handed."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from para_attn_server.testing import Server

pytestmark = pytest.mark.timeout(120)

# Rank processes are spawned, so the script needs the usual ``__main__`` guard.
SCRIPT = """
import sys
from para_attn_server import ParaAttentionServer
from tests.predictors import Greeter

if __name__ == "__main__":
    ParaAttentionServer(Greeter(sys.argv[1]), "127.0.0.1", 0, 2, output_dir=sys.argv[2]).run()
"""


def test_script_serves_the_predictor_instance_it_was_given(tmp_path: Path) -> None:
    script = tmp_path / "serve.py"
    script.write_text(SCRIPT)
    server = Server([], tmp_path, command=[sys.executable, str(script), "Ahoy", str(tmp_path / "outputs")])
    try:
        assert len(server.status()["ranks"]) == 2
        job = server.run(name="sailor")
        assert job["state"] == "succeeded"
        assert server.output(job["id"]) == b"Ahoy, sailor"  # the greeting lived only in the instance
        assert server.http.post("/generate", json={}).status_code == 400  # its schema: name is required
    finally:
        server.close()
    assert server.process.returncode == 0
