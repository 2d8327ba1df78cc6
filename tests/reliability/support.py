"""What the reliability tests share: the report they write, and times read from the
server's own log lines (so a recovery is measured by the server's clock, not the test's)."""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

from para_attn_server.testing import Server

REPORT_NAME = "reliability-report"
STAMP = re.compile(r"(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),(\d{3})")


class Report:
    """Rows per section, written as JSON and as markdown tables when the session ends."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.sections: dict[str, list[dict[str, Any]]] = {}

    def add(self, section: str, **row: Any) -> None:
        self.sections.setdefault(section, []).append(row)

    def markdown(self) -> str:
        parts = []
        for section, rows in self.sections.items():
            columns = list(dict.fromkeys(key for row in rows for key in row))
            lines = [f"### {section}", "", "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
            for row in rows:
                cells = [str(row.get(column, "")).replace("|", "\\|").replace("\n", " ") for column in columns]
                lines.append("| " + " | ".join(cells) + " |")
            parts.append("\n".join(lines))
        return "\n\n".join(parts) + "\n"

    def write(self) -> list[Path]:
        targets = [self.directory]
        if extra := os.environ.get("PARA_ATTN_RELIABILITY_REPORT"):
            targets.append(Path(extra))
        written = []
        for directory in targets:
            directory.mkdir(parents=True, exist_ok=True)
            (directory / f"{REPORT_NAME}.json").write_text(json.dumps(self.sections, indent=2) + "\n")
            (directory / f"{REPORT_NAME}.md").write_text(self.markdown())
            written.append(directory / f"{REPORT_NAME}.md")
        return written


# ---- the server's log -------------------------------------------------------------------


def log_time(line: str) -> float:
    """The epoch time of a log line (its asctime is local time, to the millisecond)."""
    match = STAMP.search(line)
    assert match, f"no timestamp in {line!r}"
    return datetime.strptime(match[1], "%Y-%m-%d %H:%M:%S").timestamp() + int(match[2]) / 1000


def generation(server: Server) -> int:
    """The newest worker group generation the server has started."""
    started = re.findall(r"worker group generation (\d+) starting", server.log.text)
    assert started, server.log.tail()
    return int(started[-1])


def generation_span(server: Server, number: int, timeout: float = 120) -> tuple[float, float, str]:
    """(started, ended, how) of one generation's setup: it ended "ready" or with a "fault"."""
    pattern = rf"worker group generation {number} (starting|ready|fault)"
    server.log.wait_for(rf"worker group generation {number} (ready|fault)", timeout)
    lines = [line for line in server.log.lines if re.search(pattern, line)]
    started = next(log_time(line) for line in lines if "starting" in line)
    end = next(line for line in lines if re.search(rf"generation {number} (ready|fault)", line))
    return started, log_time(end), "ready" if " ready" in end else "fault"


def until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    """Re-check ``condition`` (a state another process changes) until it holds."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"{what}: not within {timeout} s"
        time.sleep(0.05)


def status_bytes(pid: int, key: str) -> int:
    """A ``/proc/PID/status`` size in bytes: ``VmRSS`` (resident now), ``VmHWM`` (its peak)."""
    status = Path(f"/proc/{pid}/status").read_text()
    (kib,) = (line.split()[1] for line in status.splitlines() if line.startswith(f"{key}:"))
    return int(kib) * 1024


def peak_rss(pid: int) -> int:
    """The process's peak resident memory so far, in bytes (it only grows)."""
    return status_bytes(pid, "VmHWM")


@contextlib.contextmanager
def stalled_readers(server: Server, path: str, count: int) -> Iterator[list[socket.socket]]:
    """``count`` connections that ask for ``path`` with tiny receive buffers and, once each
    has its answer's first bytes (a 200), read no further while the block runs."""
    readers = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(count)]
    try:
        for sock in readers:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.sendall(f"GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n".encode())
        for sock in readers:
            sock.settimeout(30)
            # A body built whole before it is sent would be in memory by its first byte.
            assert sock.recv(4096).startswith(b"HTTP/1.1 200")
        yield readers
    finally:
        for sock in readers:
            sock.close()
