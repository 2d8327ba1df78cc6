"""What every benchmark needs: a server it starts and stops, fast clients, statistics.

Clients are deliberately thin (http.client for sequential requests, raw asyncio streams for
concurrent ones) so that on a small machine the client is not what is measured; the
"floor" (a trivial endpoint through the same client) is measured in the same run.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import json
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from para_attn_server.testing import Server

if TYPE_CHECKING:
    from prometheus_client.samples import Sample

ROOT = Path(__file__).resolve().parent.parent


@contextlib.contextmanager
def server(model: str = "noop", num_devices: int = 2, *args: str) -> Iterator[Server]:
    """A ``para-attn-server`` subprocess (``para_attn_server.testing.Server``, as the tests
    use) with its outputs in a temporary directory; yielded once it logged ``ready:``."""
    with tempfile.TemporaryDirectory(prefix="para-attn-bench-") as tmp:
        cli = ["--model", model, "--num-devices", str(num_devices), "--log-level", "INFO", *args]
        with Server(cli, Path(tmp)) as srv:
            yield srv


def client(srv: Server) -> Client:
    return Client(srv.port)


class Client:
    """One keep-alive HTTP/1.1 connection."""

    def __init__(self, port: int) -> None:
        self.conn = http.client.HTTPConnection("127.0.0.1", port)

    def request(
        self, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None
    ) -> tuple[int, bytes]:
        hdrs = {"content-type": "application/json"} if body is not None else {}
        if headers:
            hdrs.update(headers)
        self.conn.request(method, path, body=body, headers=hdrs)
        response = self.conn.getresponse()
        return response.status, response.read()

    def json(self, method: str, path: str, body: Any = None, expect: int | None = None) -> Any:
        status, data = self.request(method, path, None if body is None else json.dumps(body).encode())
        if expect is not None and status != expect:
            raise RuntimeError(f"{method} {path}: {status} {data[:200]!r}")
        return json.loads(data)


def metric_samples(port: int) -> list[Sample]:
    """The server's ``/metrics``, read with prometheus_client's own parser."""
    from prometheus_client.parser import text_string_to_metric_families

    text = Client(port).request("GET", "/metrics")[1].decode()
    return [sample for family in text_string_to_metric_families(text) for sample in family.samples]


def timed(fn: Callable[[], Any], repeat: int, warmup: int = 5) -> list[float]:
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        out.append(time.perf_counter() - start)
    return out


@dataclass
class Stat:
    median: float
    min: float
    max: float
    p90: float
    p99: float
    n: int

    @classmethod
    def of(cls, samples: list[float]) -> Stat:
        s = sorted(samples)
        return cls(statistics.median(s), s[0], s[-1], s[int(0.9 * (len(s) - 1))], s[int(0.99 * (len(s) - 1))], len(s))

    def ms(self) -> str:
        return f"{self.median * 1e3:8.3f} ms  [{self.min * 1e3:.3f} .. {self.max * 1e3:.3f}]"


class Report:
    """Rows of (suite, case, value, unit, detail); printed as a table and saved as JSON."""

    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []

    def add(self, suite: str, case: str, value: float | None, unit: str, detail: str = "", **extra: Any) -> None:
        """A row; ``value`` None where nothing was measured (JSON null, "-" in the table)."""
        row = {"suite": suite, "case": case, "value": value, "unit": unit, "detail": detail, **extra}
        self.rows.append(row)
        print(f"  {suite:<11} {case:<44} {_fmt(value, unit):>14}  {detail}", flush=True)

    def table(self) -> str:
        lines = ["| suite | case | median | detail |", "|---|---|---:|---|"]
        for r in self.rows:
            lines.append(f"| {r['suite']} | {r['case']} | {_fmt(r['value'], r['unit'])} | {r['detail']} |")
        return "\n".join(lines)


def _fmt(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    if unit == "s":
        return f"{value * 1e3:.3f} ms"
    if unit == "us":
        return f"{value:.1f} µs"
    return f"{value:.3g} {unit}"


async def raw_request(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, head: bytes, body: bytes
) -> tuple[int, bytes]:
    """Send one prepared request on a keep-alive connection and read the response."""
    writer.write(head + body)
    status_line = await reader.readline()
    status = int(status_line.split()[1])
    length = 0
    while True:
        line = await reader.readline()
        if line in (b"\r\n", b""):
            break
        name, _, value = line.partition(b":")
        if name.lower() == b"content-length":
            length = int(value)
    return status, await reader.readexactly(length)


async def drive_wait_jobs(
    port: int, body: bytes, clients: int, per_client: int, warmup: tuple[int, int]
) -> tuple[float, list[float]]:
    """Jobs/s and every job's latency: ``clients`` connections, each submitting ``body`` with
    ``POST /v1/jobs?wait`` (bytes back) ``per_client`` times in a row, after a warm-up of
    ``warmup`` = (connections, jobs each) whose timings are dropped."""
    head = post_head("/v1/jobs?wait=60", body, "application/octet-stream")
    latencies: list[float] = []

    async def one_client(jobs: int) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        for _ in range(jobs):
            start = time.perf_counter()
            status, _ = await raw_request(reader, writer, head, body)
            assert status == 201, status
            latencies.append(time.perf_counter() - start)
        writer.close()

    await asyncio.gather(*(one_client(warmup[1]) for _ in range(warmup[0])))
    latencies.clear()
    start = time.perf_counter()
    await asyncio.gather(*(one_client(per_client) for _ in range(clients)))
    return len(latencies) / (time.perf_counter() - start), latencies


def post_head(path: str, body: bytes, accept: str = "application/json") -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Accept: {accept}\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode()
