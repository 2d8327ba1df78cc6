"""Test support: a real ``para-attn-server`` in a subprocess, and a client for its API
(``para_attn_client.Client``, with no retries: a test sees every refusal).

Used by this project's tests and benchmarks, and meant for predictor authors who want to
test their predictor end to end, the way clients will use it::

    from para_attn_server.testing import Server

    with Server(["--model", "my_package:MyPredictor", "--num-devices", "2"], tmp_path) as server:
        job = server.run(prompt="a cat")
        png = server.output(job["id"])

``Server`` starts the real CLI on a free port (``--port 0``; the port is read from its
"listening on" log line) and waits on log lines ("ready: ..."), never on a sleep.
"""

from __future__ import annotations

import base64
import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import Any

import msgspec
from httpx_sse import connect_sse

from para_attn_client import TERMINAL, Client, Job
from para_attn_client.types import decode, error_from

CLI = Path(sys.executable).with_name("para-attn-server")


def server_env(**extra: str) -> dict[str, str]:
    """This process's environment for a server process, unbuffered, with ``extra``."""
    return {**os.environ, "PYTHONUNBUFFERED": "1", **extra}


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


class LogWatcher:
    """Collects a process's stderr lines in a thread; tests wait on lines appearing."""

    def __init__(self, process: subprocess.Popen[str]) -> None:
        self.process = process
        self.lines: list[str] = []
        self._changed = threading.Condition()
        self._closed = False
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            with self._changed:
                self.lines.append(line.rstrip("\n"))
                self._changed.notify_all()
        with self._changed:
            self._closed = True
            self._changed.notify_all()

    def wait_for(self, pattern: str, timeout: float = 60, since: int = 0) -> re.Match[str]:
        """The first line from index ``since`` matching ``pattern``; fails if the process
        ends or ``timeout`` passes first."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        checked = since
        with self._changed:
            while True:
                for line in self.lines[checked:]:
                    if match := regex.search(line):
                        return match
                checked = max(checked, len(self.lines))
                remaining = deadline - time.monotonic()
                if self._closed or remaining <= 0:
                    why = "the process ended" if self._closed else f"{timeout:g} s passed"
                    raise AssertionError(f"{why} before a log line matched {pattern!r}:\n{self.tail()}")
                self._changed.wait(remaining)

    def wait_closed(self, timeout: float) -> None:
        with self._changed:
            self._changed.wait_for(lambda: self._closed, timeout)

    def tail(self, n: int = 60) -> str:
        return "\n".join(self.lines[-n:])

    @property
    def text(self) -> str:
        return "\n".join(self.lines)


class Server:
    """One para-attn-server process (the real CLI) and a client for its HTTP API."""

    def __init__(
        self,
        args: list[str],
        workdir: Path,
        *,
        wait_ready: bool = True,
        command: list[str] | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        self.output_dir = workdir / "outputs"
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        cmd = command or [str(CLI), "--port", "0", "--output-dir", str(self.output_dir), *args]
        self.process = subprocess.Popen(
            cmd, cwd=workdir, env=env or server_env(), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        self.log = LogWatcher(self.process)
        self._terminated = False
        try:
            match = self.log.wait_for(r"listening on http://(\S+):(\d+)")
            self.port = int(match[2])
            self.url = f"http://{match[1]}:{self.port}"
            # No key from the environment, no retries; ``http`` is the client's own
            # connection, so headers a test sets on it go with every request.
            self.client = Client(self.url, api_key="", timeout=60, retries=0)
            self.http = self.client.http
            if wait_ready:
                self.wait_ready()
        except BaseException:
            self.kill()
            raise

    def wait_ready(self, timeout: float = 120) -> None:
        self.log.wait_for(r"ready: \d+ rank", timeout)

    # ---- jobs ---------------------------------------------------------------------------

    def submit(self, **inputs: Any) -> str:
        """Queue a job with ``POST /v1/jobs`` (as a plain HTTP client would; the client
        submits with ``PUT``); its id. Raises the client's error if the server refuses it."""
        response = self.http.post("/v1/jobs", json=inputs)
        if response.status_code != 201:
            raise error_from(response)
        return decode(response, Job).id

    def wait(self, job_id: str, timeout: float = 90) -> dict[str, Any]:
        """The job's view once it ended (long-polls ``?wait=``), as JSON gives it."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            job = self.client.get(job_id, wait=max(0.0, min(remaining, 30)))
            if job.done:
                view: dict[str, Any] = msgspec.to_builtins(job)
                return view
            assert remaining > 0, f"job {job_id} still {job.state} after {timeout} s:\n{self.log.tail()}"

    def run(self, **inputs: Any) -> dict[str, Any]:
        return self.wait(self.submit(**inputs))

    def output(self, job_id: str) -> bytes:
        return self.client.output(job_id)[0]

    def events(self, job_id: str, timeout: float = 90) -> Iterator[tuple[str, dict[str, Any]]]:
        """The job's Server-Sent Events as (event, data), every kind (previews too, which
        ``Client.events`` skips), until the stream ends; ``timeout`` between two."""
        with connect_sse(self.http, "GET", f"/v1/jobs/{job_id}/events", timeout=timeout) as source:
            assert source.response.status_code == 200
            for sse in source.iter_sse():
                yield sse.event, msgspec.json.decode(sse.data)

    def wait_running(self, job_id: str, step: int = 0, timeout: float = 90) -> None:
        """Wait until the job runs and, with ``step``, has passed that step boundary."""
        for event, data in self.events(job_id, timeout):
            if event == "state" and data["state"] == "running" and step == 0:
                return
            if event == "progress" and data["step"] >= step > 0:
                return
            assert data.get("state") not in TERMINAL, data
        raise AssertionError(f"job {job_id} never got to step {step}")

    def status(self) -> dict[str, Any]:
        """/server_status's body: 200 when ready, 503 while (re)starting."""
        response = self.http.get("/server_status")
        assert response.status_code in (200, 503), response.text
        body: dict[str, Any] = response.json()
        return body

    def restarts(self) -> int:
        return int(self.status()["restarts"])

    def rank_pids(self) -> list[int]:
        return [row["pid"] for row in self.status()["ranks"]]

    # ---- lifecycle ----------------------------------------------------------------------

    def terminate(self) -> None:
        """Send SIGTERM (drain) once: a second one means "stop now" to the server."""
        if self.process.poll() is None and not self._terminated:
            self._terminated = True
            self.process.send_signal(signal.SIGTERM)

    def stop(self, timeout: float = 60) -> int:
        """SIGTERM (drain) and wait; returns the exit code."""
        self.terminate()
        try:
            code = self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"the server did not exit within {timeout} s of SIGTERM:\n{self.log.tail()}") from None
        self.log.wait_closed(10)
        return code

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(30)

    def close(self) -> None:
        if hasattr(self, "client"):
            self.client.close()
        with contextlib.suppress(AssertionError):  # stop() already killed it and said why
            self.stop()

    def __enter__(self) -> Server:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.close()


def pid_gone(pid: int) -> bool:
    """True once the process has exited (a zombie awaiting its parent counts as gone)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return True
    return state in ("Z", "X")


def b64decode(text: str) -> bytes:
    return base64.b64decode(text, validate=True)
