"""Starting a server as an operator does: one line from a model directory to a server, and
one server per output directory (a second one leaves the first's jobs and journal alone)."""

from __future__ import annotations

import sqlite3
import subprocess
import time
from collections.abc import Callable
from contextlib import closing
from pathlib import Path
from typing import Any

from para_attn_server.storage.dirlock import LOCK_FILE
from para_attn_server.testing import CLI, server_env


def test_a_model_directory_alone_is_served_by_its_pipelines_predictor_under_its_name(
    launch: Any, tiny_pipeline: Callable[[str], Path], tmp_path: Path
) -> None:
    link = tmp_path / "my-flux"
    link.symlink_to(tiny_pipeline("flux"))
    server = launch("--model-path", str(link), "--num-devices", "1", "-o", 'defaults={"num_inference_steps": 2}')

    (model,) = server.status()["models"]
    listed = [entry["id"] for entry in server.http.get("/v1/models").json()["data"]]
    document = server.http.get("/v1/models/my-flux/schema").json()
    schema = document["$defs"][document["$ref"].rsplit("/", 1)[1]]
    job = server.run(prompt="a cat", width=64, height=64)

    assert (model["name"], model["predictor"]) == ("my-flux", "FluxPredictor")
    assert listed[0] == "my-flux"
    assert schema["properties"]["num_inference_steps"]["default"] == 2  # -o defaults, in the schema
    assert job["state"] == "succeeded", job
    assert job["total"] == 2  # it ran with that default
    assert server.http.get("/v1/models/tiny/schema").status_code == 400  # not served here


def journal_rows(output_dir: Path) -> tuple[list[str], list[tuple[str, str, bytes]]]:
    """The journal's files and rows, read without writing. Rows, not file bytes: the first
    server's own checkpoints rewrite the files every few seconds without changing a row."""
    names = sorted(path.name for path in (output_dir / ".jobs").iterdir())
    with closing(sqlite3.connect(f"file:{output_dir / '.jobs' / 'jobs.sqlite3'}?mode=ro", uri=True)) as db:
        return names, sorted(db.execute("SELECT id, state, record FROM jobs"))


def test_a_second_server_on_the_output_directory_exits_at_once_and_touches_nothing(launch: Any) -> None:
    first = launch("--model", "noop", "--num-devices", "1")
    job = first.submit(steps=100, step_seconds=0.1)  # ten seconds of running: past the second's start
    first.wait_running(job, step=1)
    before = journal_rows(first.output_dir)

    started = time.monotonic()
    second = subprocess.run(
        [str(CLI), "--model", "noop", "--port", "0", "--output-dir", str(first.output_dir)],
        env=server_env(), capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    took = time.monotonic() - started

    assert second.returncode == 2, second.stderr
    assert took < 5
    pid = (first.output_dir / ".jobs" / LOCK_FILE).read_text().strip()
    assert second.stderr.strip().splitlines()[-1] == (
        f"para-attn-server: error: --output-dir {first.output_dir}: another server (pid {pid}) is using it; "
        "give each server a directory of its own"
    )
    assert first.client.get(job).state == "running"  # so the rows below are still the running job's
    assert journal_rows(first.output_dir) == before  # no record or file added, changed or removed
    assert first.wait(job)["state"] == "succeeded"
