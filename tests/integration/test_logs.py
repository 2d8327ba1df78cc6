"""``--log-format json``: every line the server's process tree prints (the server, its
ranks, uvicorn's access log at DEBUG) is a JSON object, a job's lines carry its id, and what
libraries print on every rank shows once."""

from __future__ import annotations

import json
import logging
import warnings
from pathlib import Path
from typing import Any

import pytest

from para_attn_server import Output, Predictor, RankContext
from para_attn_server.testing import CLI, Server

pytestmark = pytest.mark.timeout(180)


class Noisy(Predictor):
    """Prints on every rank as libraries do: a logger given a stderr handler of its own when
    the library is imported (diffusers and transformers do that), and a deprecation warning."""

    def setup(self, context: RankContext) -> None:
        self.rank = context.rank
        library = logging.getLogger("noisy_library")
        library.addHandler(logging.StreamHandler())
        library.propagate = False
        library.warning("noisy_library loaded")
        warnings.warn("noisy_library.old is deprecated", FutureWarning, stacklevel=1)

    def predict(self, prompt: str) -> Output | None:
        return Output(prompt.encode(), "txt") if self.rank == 0 else None


class Run:
    def __init__(self, lines: list[str], job_id: str, code: int) -> None:
        self.lines, self.job_id, self.code = lines, job_id, code

    def records(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.lines]


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Run:
    """A server on 2 ranks with --log-format json, one job, then SIGTERM: all it printed."""
    workdir: Path = tmp_path_factory.mktemp("logs")
    args = [
        "--port", "0", "--output-dir", str(workdir / "outputs"), "--model", f"{__name__}:Noisy",
        "--num-devices", "2", "--log-format", "json", "--log-level", "DEBUG",
    ]  # fmt: skip
    # stdout joins stderr, which the Server reads: both must hold JSON lines only.
    command = ["sh", "-c", 'exec "$0" "$@" 1>&2', str(CLI), *args]
    server = Server([], workdir, command=command, wait_ready=False)
    try:
        server.log.wait_for(r"ready: .*rank", 120)
        job_id = server.submit(prompt="hello")
        assert server.wait(job_id)["state"] == "succeeded"
        code = server.stop()
    finally:
        server.close()
    return Run(server.log.lines, job_id, code)


def test_every_line_of_the_server_its_ranks_and_uvicorn_is_a_json_object(run: Run) -> None:
    for line in run.lines:
        try:
            assert isinstance(json.loads(line), dict)
        except ValueError:
            raise AssertionError(f"not a JSON line: {line!r}\n" + "\n".join(run.lines)) from None
    records = run.records()
    assert run.code == 0
    assert all({"time", "level", "logger", "message", "role"} <= set(line) for line in records)
    loggers = {(line["role"], line["logger"]) for line in records}
    assert ("server", "para_attn_server") in loggers
    assert ("server", "uvicorn.error") in loggers
    assert ("server", "uvicorn.access") in loggers  # at --log-level DEBUG
    assert any(line["role"] == "rank" and line["group"] == 0 for line in records)


def test_a_jobs_accepted_started_and_ended_lines_carry_its_id(run: Run) -> None:
    lines = [line for line in run.records() if line.get("job_id") == run.job_id]

    assert [line["state"] for line in lines] == ["queued", "running", "succeeded"]
    accepted, started, ended = (line["message"] for line in lines)
    assert accepted == f"job {run.job_id} accepted"
    assert started.startswith(f"job {run.job_id} started on group 0 (host ")
    assert ended.startswith(f"job {run.job_id} succeeded in ")
    assert lines[2]["seconds"] >= 0


def test_what_libraries_print_on_every_rank_shows_once(run: Run) -> None:
    records = run.records()
    library = [line for line in records if line["logger"] == "noisy_library"]
    warned = [line for line in records if "noisy_library.old is deprecated" in line["message"]]

    assert [(line["message"], line["rank"]) for line in library] == [("noisy_library loaded", 0)]
    assert [(line["logger"], line["rank"]) for line in warned] == [("py.warnings", 0)]
    assert "FutureWarning" in warned[0]["message"]
