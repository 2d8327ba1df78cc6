"""Helpers the integration tests share: reading a metric, an image's size, a joining host."""

from __future__ import annotations

import io
import signal
import subprocess

from PIL import Image

from para_attn_server.testing import CLI, LogWatcher, Server, server_env
from tests.prometheus import Scrape


def png_size(data: bytes) -> tuple[int, int]:
    image = Image.open(io.BytesIO(data))
    assert image.format == "PNG"
    return image.size


def scrape(server: Server) -> Scrape:
    response = server.http.get("/metrics")
    assert response.status_code == 200, response.text
    return Scrape(response.text)


def metric(server: Server, name: str, **labels: str) -> float:
    """One sample of ``/metrics``, parsed with prometheus_client's parser: ``metric(server,
    "para_attn_jobs_finished_total", state="succeeded")``."""
    return scrape(server).value(name, **labels)


class Join:
    """``para-attn-server join URL --token T ...``: another "host", as a process on this one."""

    def __init__(
        self, url: str, token: str, *args: str, env: dict[str, str] | None = None, prefix: tuple[str, ...] = ()
    ) -> None:
        # prefix: what runs it (``ip netns exec NAME``: a host of its own network)
        self.process = subprocess.Popen(
            [*prefix, str(CLI), "join", url, "--token", token, *args], env=env or server_env(),
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        self.log = LogWatcher(self.process)

    def wait(self, timeout: float = 60) -> int:
        code = self.process.wait(timeout)
        self.log.wait_closed(10)
        return code

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.wait()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            self.wait()
        except subprocess.TimeoutExpired:
            self.kill()
