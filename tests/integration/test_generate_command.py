"""``para-attn-server generate`` run as a subprocess against a real server: the output
file, what it prints (the line, --json, the progress bar), one-line errors with their exit
status, the API key, and Ctrl-C (SIGINT) cancelling the job on the server (status 130)."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import threading
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from para_attn_client import API_KEY_ENV
from para_attn_server.testing import CLI, Server, server_env
from tests.integration.support import metric, png_size

pytestmark = pytest.mark.timeout(180)

KEY = "generate-test-key"
MAX_OUTPUT = 4096
LONG = ["-p", "steps=100000", "-p", "step_seconds=0.01"]  # runs until cancelled
PREFIX = "para-attn-server generate: error: "
DONE = re.compile(r"^(\S+) \((\S+), (\d+) bytes\): job ([0-9a-f-]{36}) succeeded in \d+\.\d\d s$")


@pytest.fixture(scope="module")
def server(launch) -> Server:
    server: Server = launch("--model", "noop", "--api-key", KEY, "--max-output-bytes", str(MAX_OUTPUT))
    server.http.headers["Authorization"] = f"Bearer {KEY}"
    return server


def env(key: str | None) -> dict[str, str]:
    environment = server_env()
    environment.pop(API_KEY_ENV, None)
    if key is not None:
        environment[API_KEY_ENV] = key
    return environment


@dataclass
class Ran:
    returncode: int
    stdout: str
    stderr: str  # as the process wrote it: tqdm's redraws keep their '\r'


def generate(*args: str, cwd: Path, key: str | None = KEY) -> Ran:
    done = subprocess.run(
        [str(CLI), "generate", *args], check=False, cwd=cwd, env=env(key), stdin=subprocess.DEVNULL,
        capture_output=True, timeout=120,
    )  # fmt: skip
    return Ran(done.returncode, done.stdout.decode(), done.stderr.decode())


def one_error_line(result: Ran) -> str:
    """The error line: the only line on stderr, with no traceback."""
    lines = result.stderr.strip().split("\n")
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(PREFIX), result.stderr
    return lines[0].removeprefix(PREFIX)


def last_bar(stderr: str) -> str:
    """The progress bar as the terminal shows it at the end (tqdm redraws it after '\\r')."""
    return stderr.rstrip("\n").rsplit("\r", 1)[-1].rstrip()  # a shorter redraw ends in blanks


class Watched:
    """A ``generate`` process whose stderr (tqdm writes no newline while it redraws) is
    read as it comes, so a test can wait for what it prints."""

    def __init__(self, *args: str, cwd: Path) -> None:
        self.process = subprocess.Popen(
            [str(CLI), "generate", *args], cwd=cwd, env=env(KEY), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )  # fmt: skip
        self.stderr = b""
        self._changed = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stderr is not None
        while chunk := self.process.stderr.read1(4096):
            with self._changed:
                self.stderr += chunk
                self._changed.notify_all()

    def wait_for(self, text: str, timeout: float = 60) -> None:
        def printed() -> bool:
            return text.encode() in self.stderr

        with self._changed:
            self._changed.wait_for(lambda: printed() or self.process.poll() is not None, timeout)
            assert printed(), f"{text!r} not printed:\n{self.stderr.decode()}"

    def interrupt(self) -> tuple[int, str]:
        """Ctrl-C: SIGINT, then the exit status and all of stderr."""
        self.process.send_signal(signal.SIGINT)
        status = self.process.wait(60)
        self._reader.join(10)  # it reads to the end of the pipe
        return status, self.stderr.decode()


# ---- success ---------------------------------------------------------------------------------


def test_generate_writes_the_output_prints_one_line_and_shows_steps_done_of_total(
    server: Server, tmp_path: Path
) -> None:
    result = generate(server.url, "-p", "steps=3", "-p", "size=200", "-o", "out.bin", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    match = DONE.match(result.stdout.rstrip("\n"))
    assert match, result.stdout
    assert result.stdout.count("\n") == 1
    assert (match[1], match[2], match[3]) == ("out.bin", "application/octet-stream", "200")
    assert (tmp_path / "out.bin").read_bytes() == server.output(match[4])
    bar = last_bar(result.stderr)
    assert bar.startswith("succeeded: 100%"), result.stderr
    assert "3/3 [" in bar
    assert re.search(r"\[\d\d:\d\d<\d\d:\d\d, +[\d.]+ steps/s\]$", bar), bar  # elapsed, rate


def test_json_prints_the_job_and_where_the_output_went_named_after_the_job(server: Server, tmp_path: Path) -> None:
    result = generate(server.url, "-p", "size=50", "--json", "-q", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""  # -q: no bar
    printed = json.loads(result.stdout)
    job = printed["job"]
    assert {name: value for name, value in job.items() if value is not None} == server.wait(job["id"])
    written = tmp_path / f"{job['id']}.bin"
    assert printed["output"] == {"file": str(written), "content_type": "application/octet-stream", "bytes": 50}
    assert written.read_bytes() == server.output(job["id"])


def test_an_output_directory_gets_the_file_named_after_the_job(server: Server, tmp_path: Path) -> None:
    (tmp_path / "outs").mkdir()
    result = generate(server.url, "-o", "outs", "-q", "--json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    job_id = json.loads(result.stdout)["job"]["id"]
    assert (tmp_path / "outs" / f"{job_id}.bin").read_bytes() == server.output(job_id)


def test_the_same_id_twice_runs_the_job_once(server: Server, tmp_path: Path) -> None:
    job_id = str(uuid.uuid4())
    before = metric(server, "para_attn_jobs_submitted_total")
    runs = [generate(server.url, "--id", job_id, "-p", "size=10", "--json", cwd=tmp_path) for _ in range(2)]
    assert [run.returncode for run in runs] == [0, 0]
    assert json.loads(runs[0].stdout) == json.loads(runs[1].stdout)
    assert metric(server, "para_attn_jobs_submitted_total") == before + 1
    other = generate(server.url, "--id", job_id, "-p", "size=11", cwd=tmp_path)
    assert other.returncode == 2
    assert one_error_line(other) == "--id: a job with this id exists with different inputs"


# ---- errors ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("params", "names"),
    [
        (["-p", "steps=-1"], "steps: Expected `int` >= 0"),
        (["-p", "size=large"], "size: Expected `int`, got `str`"),
        (["-p", "colour=red"], "colour: Object contains unknown field `colour`"),
        (["-p", "steps"], "argument -p/--param: expected KEY=VALUE, got 'steps'"),
        (["--id", "job-1"], "argument --id: expected a UUID, got 'job-1'"),
    ],
)
def test_bad_input_is_one_line_naming_the_field_and_status_2(
    server: Server, tmp_path: Path, params: list[str], names: str
) -> None:
    before = metric(server, "para_attn_jobs_submitted_total")
    result = generate(server.url, *params, cwd=tmp_path)
    assert result.returncode == 2
    assert names in one_error_line(result)
    assert result.stdout == ""
    assert metric(server, "para_attn_jobs_submitted_total") == before
    assert list(tmp_path.iterdir()) == []


def test_a_failed_job_is_status_1_with_its_reason(server: Server, tmp_path: Path) -> None:
    result = generate(server.url, "-p", f"size={MAX_OUTPUT * 2}", "--json", cwd=tmp_path)
    assert result.returncode == 1
    printed = json.loads(result.stdout)
    job = printed["job"]
    assert (job["state"], printed["output"]) == ("failed", None)
    assert "output too large" in job["error"]
    bar, error = result.stderr.rstrip("\n").rsplit("\n", 1)
    assert last_bar(bar).startswith("failed"), result.stderr
    assert error == f"{PREFIX}job {job['id']} failed: {job['error']}"


def test_the_api_key_comes_from_the_option_or_the_environment(server: Server, tmp_path: Path) -> None:
    missing = generate(server.url, "-q", cwd=tmp_path, key=None)
    assert missing.returncode == 2
    assert one_error_line(missing) == (
        f"--api-key: missing or invalid API key (give --api-key or set ${API_KEY_ENV})"
    )  # fmt: skip
    assert generate(server.url, "-q", "--api-key", KEY, cwd=tmp_path, key=None).returncode == 0
    assert generate(server.url, "-q", "--api-key", "wrong", cwd=tmp_path).returncode == 2


# ---- Ctrl-C ----------------------------------------------------------------------------------


def test_sigint_while_running_cancels_the_job_on_the_server_and_exits_130(server: Server, tmp_path: Path) -> None:
    job_id = str(uuid.uuid4())
    command = Watched(server.url, "--id", job_id, *LONG, cwd=tmp_path)
    command.wait_for("running")  # generate saw it start: the job exists
    server.wait_running(job_id, step=2)  # and the server says so
    status, stderr = command.interrupt()
    assert status == 130, stderr
    job: dict[str, Any] = server.http.get(f"/v1/jobs/{job_id}").json()
    assert job["state"] == "cancelled"  # already, not later: generate waited for it
    last = stderr.rstrip("\n").rsplit("\n", 1)[-1]
    assert last == f"para-attn-server generate: interrupted: job {job_id} cancelled at step {job['step']} of 100000"
    assert "Traceback" not in stderr
    assert list(tmp_path.iterdir()) == []


def test_sigint_while_queued_cancels_the_job_before_it_runs(server: Server, tmp_path: Path) -> None:
    blocker = server.submit(steps=100_000, step_seconds=0.01)
    try:
        server.wait_running(blocker)
        job_id = str(uuid.uuid4())
        command = Watched(server.url, "--id", job_id, "-p", "size=1", cwd=tmp_path)
        command.wait_for("queued (0 ahead)")
        status, stderr = command.interrupt()
        assert status == 130, stderr
        job = server.http.get(f"/v1/jobs/{job_id}").json()
        assert job["state"] == "cancelled"
        assert "started_at" not in job  # it never ran
        assert stderr.rstrip("\n").endswith(f"interrupted: job {job_id} cancelled")
    finally:
        server.http.post(f"/v1/jobs/{blocker}/cancel")
    assert server.wait(blocker)["state"] == "cancelled"


# ---- a real image ----------------------------------------------------------------------------


def test_generate_with_the_tiny_model_writes_its_png(tiny_server: Server, tmp_path: Path) -> None:
    result = generate(
        tiny_server.url, "-p", "prompt=a cat in a hat", "-p", "seed=7", "-p", "num_inference_steps=2",
        "-o", "cat.png", cwd=tmp_path, key=None,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    match = DONE.match(result.stdout.rstrip("\n"))
    assert match, result.stdout
    assert (match[1], match[2]) == ("cat.png", "image/png")
    data = (tmp_path / "cat.png").read_bytes()
    assert png_size(data) == (32, 32)
    assert data == tiny_server.output(match[4])
    assert "2/2 [" in last_bar(result.stderr)


def test_at_file_sends_a_picture_and_job_id_chains_the_output(tiny_server: Server, tmp_path: Path) -> None:
    Image.new("RGB", (48, 32), (220, 40, 40)).save(tmp_path / "cat.png")
    steps = ["-p", "num_inference_steps=2", "-p", "width=48", "-p", "height=32", "--json", "-q"]
    first = generate(
        tiny_server.url, "-p", "prompt=a cat in a hat", "-p", "image=@cat.png", "-p", "strength=0.5", *steps,
        "-o", "edited.png", cwd=tmp_path, key=None,
    )  # fmt: skip
    assert first.returncode == 0, first.stderr
    job_id = json.loads(first.stdout)["job"]["id"]
    assert png_size((tmp_path / "edited.png").read_bytes()) == (48, 32)

    second = generate(
        tiny_server.url, "-p", "prompt=a cat in a red hat", "-p", f"image=job:{job_id}", *steps,
        "-o", "again.png", cwd=tmp_path, key=None,
    )  # fmt: skip
    assert second.returncode == 0, second.stderr
    assert png_size((tmp_path / "again.png").read_bytes()) == (48, 32)


def test_a_file_the_server_cannot_read_as_a_picture_is_status_2_naming_the_field(
    tiny_server: Server, tmp_path: Path
) -> None:
    (tmp_path / "notes.png").write_text("not a picture")
    result = generate(tiny_server.url, "-p", "prompt=x", "-p", "image=@notes.png", cwd=tmp_path, key=None)
    assert result.returncode == 2
    assert one_error_line(result).startswith("image: ")
