"""What one HTTP client may hold: a capped request head (431), a timed request body (408),
connections closed after an early answer (401, 413), and health probes answered while
``--max-connections`` is full.

Every test speaks HTTP/1.1 over a raw socket on 127.0.0.1, as an attacker would: heads that
never end, bodies sent a byte at a time, trailers that never end.
"""

from __future__ import annotations

import socket
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from para_attn_server.testing import Server
from tests.reliability.support import Report, peak_rss, until

pytestmark = pytest.mark.timeout(240)

NOOP = ["--model", "noop", "--num-devices", "1"]
KEY = "s3cret-" + uuid.uuid4().hex
MAX_HEADER = 64 * 1024  # --max-header-bytes's default
MAX_BODY = 4096
BODY_TIMEOUT = 2.0
CAPPED = 8  # --max-connections of the ``capped`` server
MIB = 1 << 20


@pytest.fixture(scope="module")
def guarded(launch: Callable[..., Server]) -> Server:
    """A keyed server with a short body timeout (the head cap is the default)."""
    server = launch(
        *NOOP, "--api-key", KEY, "--max-body-bytes", str(MAX_BODY), "--body-timeout", str(BODY_TIMEOUT),
        "--keepalive-timeout", "2",
    )  # fmt: skip
    server.http.headers["X-API-Key"] = KEY
    return server


@pytest.fixture(scope="module")
def capped(launch: Callable[..., Server]) -> Server:
    """A keyless server (the default) with few connections and the default body timeout."""
    return launch(*NOOP, "--max-connections", str(CAPPED))


def head(method: str, path: str, *headers: tuple[str, str]) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1", *(f"{name}: {value}" for name, value in headers)]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def answer(sock: socket.socket, timeout: float) -> tuple[bytes, bool]:
    """What the server sends until it closes the connection (True) or ``timeout`` passes (False)."""
    data = b""
    deadline = time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0:
        sock.settimeout(left)
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            break
        except ConnectionResetError:
            return data, True
        if not chunk:
            return data, True
        data += chunk
    return data, False


def status(data: bytes) -> int | None:
    return int(data.split(b" ", 2)[1]) if data.startswith(b"HTTP/1.1 ") else None


def response_headers(data: bytes) -> dict[str, str]:
    lines = data.split(b"\r\n\r\n", 1)[0].decode("latin-1").split("\r\n")[1:]
    return {name.lower(): value.strip() for name, _, value in (line.partition(":") for line in lines)}


def connect(server: Server) -> socket.socket:
    return socket.create_connection(("127.0.0.1", server.port), timeout=30)


# ---- the request head -------------------------------------------------------------------------


@pytest.mark.parametrize("piece", [None, 1024], ids=["at-once", "in-1-KiB-pieces"])
def test_a_request_head_past_the_cap_is_answered_431_and_closed(guarded: Server, piece: int | None) -> None:
    start = b"GET /health/live HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Fill: "
    whole = start + b"a" * (MAX_HEADER - len(start) - 4) + b"\r\n\r\n"
    assert len(whole) == MAX_HEADER
    with connect(guarded) as sock:  # a head of exactly the cap is served
        sock.sendall(whole)
        assert sock.recv(65536).startswith(b"HTTP/1.1 200 ")
    overlong = whole[:-4] + b"a" * 5  # one byte more, the head not even finished: refused
    assert len(overlong) == MAX_HEADER + 1
    with connect(guarded) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for at in range(0, len(overlong), piece or len(overlong)):
            sock.sendall(overlong[at : at + (piece or len(overlong))])
            if piece:
                time.sleep(0.002)  # shapes the traffic: the server reads many small pieces
        data, closed = answer(sock, 30)
    assert status(data) == 431, data[:200]
    assert closed
    assert response_headers(data)["connection"] == "close"


def test_pipelined_heads_each_get_the_whole_cap(guarded: Server) -> None:
    fill = ("X-Fill", "a" * (MAX_HEADER * 2 // 3))  # two of them exceed one cap
    with connect(guarded) as sock:
        sock.sendall(head("GET", "/health/live", fill) + head("GET", "/health/live", fill, ("Connection", "close")))
        data, closed = answer(sock, 30)
    assert closed
    assert data.count(b"HTTP/1.1 200 ") == 2, data[:300]


def test_four_clients_sending_300_header_lines_of_1_mib_cost_no_memory(guarded: Server, report: Report) -> None:
    pid = guarded.process.pid
    Path(f"/proc/{pid}/clear_refs").write_text("5")  # the peak (VmHWM) starts again from now
    before = peak_rss(pid)
    line = b"X-Fill: " + b"a" * MIB + b"\r\n"

    def attack(_: int) -> tuple[int, bytes, bool]:
        sent = 0
        with connect(guarded) as sock:
            try:
                sock.sendall(b"GET /health/live HTTP/1.1\r\nHost: 127.0.0.1\r\n")
                for _ in range(300):
                    sock.sendall(line)
                    sent += len(line)
                sock.sendall(b"\r\n")
            except (BrokenPipeError, ConnectionResetError):
                pass
            return (sent, *answer(sock, 60))

    started = time.monotonic()
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(attack, range(4)))
    took = time.monotonic() - started
    grown = peak_rss(pid) - before
    assert all(closed for _, _, closed in results)
    assert all(status(data) in (431, None) for _, data, _ in results), [data[:100] for _, data, _ in results]
    assert grown < 32 * MIB, grown  # today: 4 x 300 MiB
    assert guarded.http.get("/health/live").status_code == 200
    refused = sum(status(data) == 431 for _, data, _ in results)
    report.add(
        "Integrity",
        case="4 clients sending request heads of 300 header lines of 1 MiB each (no key)",
        outcome=(
            f"each refused once its head passed --max-header-bytes (64 KiB by default): 431 read by {refused} "
            f"of 4 (a client still sending may see a reset), all closed within {took * 1000:.0f} ms; peak server RSS "
            f"{before / MIB:.0f} -> {(before + grown) / MIB:.0f} MiB (+{grown / MIB:.1f})"
        ),
    )


def test_trailers_of_a_chunked_body_share_the_head_cap(capped: Server) -> None:
    chunked = head("POST", "/v1/jobs", ("Content-Type", "application/json"), ("Transfer-Encoding", "chunked"))
    with connect(capped) as sock:  # chunks and a trailer of a few bytes are read as ever
        sock.sendall(chunked + b'1\r\n{\r\nb\r\n"size": 10}\r\n0\r\nX-Trailer: 1\r\n\r\n')
        assert status(sock.recv(65536)) == 201
    with connect(capped) as sock:
        sock.sendall(chunked)
        sock.sendall(b"2\r\n{}\r\n0\r\nX-Trailer: " + b"a" * (4 * MAX_HEADER))  # trailers that never end
        # Closed well before --body-timeout (60 s by default).
        data, closed = answer(sock, 20)
    assert closed, data[:200]


# ---- the request body -------------------------------------------------------------------------


def trickle(sock: socket.socket, timeout: float) -> bytes:
    """Send a body byte every 0.25 s until the server answers or closes; what it sent."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        sock.settimeout(0.25)
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            try:
                sock.sendall(b" ")  # JSON whitespace: the body stays valid so far
            except (BrokenPipeError, ConnectionResetError):
                break
            continue
        except ConnectionResetError:
            break
        if not chunk:
            break
        data, _ = answer(sock, 10)
        return chunk + data
    return b""


def test_a_body_sent_a_byte_at_a_time_is_cut_off_with_408(guarded: Server, report: Report) -> None:
    job = head("POST", "/v1/jobs", ("X-API-Key", KEY), ("Content-Type", "application/json"), ("Content-Length", "1000"))
    with connect(guarded) as sock:
        sock.sendall(job)
        started = time.monotonic()
        data = trickle(sock, 30)
        took = time.monotonic() - started
        closed = answer(sock, 10)[1]
    assert status(data) == 408, data[:200]
    assert closed
    assert response_headers(data)["connection"] == "close"
    assert BODY_TIMEOUT * 0.9 <= took < BODY_TIMEOUT + 10, took
    assert guarded.run(size=10)["state"] == "succeeded"
    assert "Traceback" not in guarded.log.text
    report.add(
        "Integrity",
        case="a request body sent one byte every 0.25 s (no key)",
        outcome=f"408 and closed {took:.2f} s after the head (--body-timeout {BODY_TIMEOUT:g}; 60 s by default)",
    )


JSON = ("Content-Type", "application/json")


@pytest.mark.parametrize(
    ("sent", "expected"),
    [
        (head("POST", "/v1/jobs", JSON, ("Content-Length", "1000")) + b"{", 401),
        (head("GET", "/v1/jobs/" + uuid.uuid4().hex), 401),
        (head("POST", "/v1/jobs", ("X-API-Key", KEY), JSON, ("Content-Length", str(MAX_BODY + 1))) + b"{", 413),
    ],
    ids=["401-body-unsent", "401-no-body", "413"],
)
def test_a_401_or_413_closes_the_connection(guarded: Server, sent: bytes, expected: int) -> None:
    with connect(guarded) as sock:
        sock.sendall(sent)
        data, closed = answer(sock, 20)
    assert status(data) == expected, data[:200]
    assert closed
    assert response_headers(data)["connection"] == "close"


def test_a_client_still_sending_after_an_early_401_is_not_reset(guarded: Server) -> None:
    # Closed at once, the unread body would make the kernel reset the connection: a client
    # still sending could lose the answer. The rest is read and dropped, then a clean close.
    rest = b" " * (2 * MIB)
    with connect(guarded) as sock:
        sock.sendall(head("POST", "/v1/jobs", JSON, ("Content-Length", str(len(rest) + 1))) + b"{")
        data = b""
        while b"}" not in data:  # the whole 401: its JSON body ends with "}"
            chunk = sock.recv(65536)
            assert chunk, data
            data += chunk
        assert status(data) == 401, data[:200]
        assert response_headers(data)["connection"] == "close"
        sock.sendall(rest)
        sock.shutdown(socket.SHUT_WR)
        sock.settimeout(30)
        assert sock.recv(65536) == b""  # an end, not a ConnectionResetError


def test_a_client_sending_its_whole_body_still_reads_the_401(guarded: Server) -> None:
    # The connection closes after an early answer, yet the client, still sending, must read it.
    body = b'{"size": 10, "pad": "' + b"a" * (2 * MIB) + b'"}'
    response = httpx.post(f"{guarded.url}/v1/jobs", content=body, headers={"Content-Type": "application/json"})
    assert response.status_code == 401
    assert response.headers["connection"] == "close"


# ---- connections at once ------------------------------------------------------------------------


def test_health_answers_while_slow_bodies_hold_every_connection(capped: Server, report: Report) -> None:
    job = head("POST", "/v1/jobs", ("Content-Type", "application/json"), ("Content-Length", "1000"))
    other = f"{capped.url}/v1/jobs/{uuid.uuid4().hex}"
    held = [connect(capped) for _ in range(CAPPED)]
    try:
        for sock in held:
            sock.sendall(job + b"{")
        until(lambda: httpx.get(other).status_code == 503, 30, "the connection cap full")
        with connect(capped) as sock:
            started = time.monotonic()
            sock.sendall(head("GET", "/health/live"))
            live = sock.recv(65536)
            took = time.monotonic() - started
        assert status(live) == 200, live
        ready = httpx.get(f"{capped.url}/health/ready")
        assert ready.status_code == 200, ready.text
        assert httpx.get(other).status_code == 503  # still held: the cap is not lifted for others
    finally:
        for sock in held:
            sock.close()
    until(lambda: httpx.get(other).status_code == 404, 30, "the connections released")
    report.add(
        "Integrity",
        case=f"{CAPPED} clients sending request bodies slowly hold all --max-connections {CAPPED} (no key)",
        outcome=f"other routes 503; /health/live and /health/ready 200 (in {took * 1000:.0f} ms)",
    )
