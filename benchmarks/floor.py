"""The floor: the least a server can do to answer the comparison suite's client.

It already holds every answer, built once at start, and serves the same endpoint shapes as
the servers it is compared with: ``POST /generate`` (202 and an id), ``GET /get_output/<id>``
(200 and the original's base64 JSON at once, never 202), ``POST /v1/jobs`` (201 and the raw
bytes) and ``GET /server_status``. What remains of a job's time is the client, loopback
HTTP and the Python server's own request handling, which every Python server pays.

The stack is a bare ASGI callable under uvicorn with uvloop and httptools: the fastest
Python HTTP stack at hand (a raw asyncio protocol would be faster still, but it would no
longer be an HTTP server anyone deploys), and the same one our server runs on, so the
overhead above the floor is what the framework and the job machinery add, not the choice
of HTTP parser.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from .same_predictor import payload_bytes

Send = Callable[[dict[str, Any]], Awaitable[None]]
Receive = Callable[[], Awaitable[dict[str, Any]]]


def original_body(data: bytes) -> bytes:
    """The original's 200 answer for ``data``: ``{"output": base64, "file_type": "png"}``."""
    import base64

    return json.dumps({"output": base64.b64encode(data).decode(), "file_type": "png"}).encode()


class FloorApp:
    def __init__(self, sizes: tuple[int, ...]) -> None:
        self.raw = {size: payload_bytes(size) for size in sizes}
        self.original = {size: original_body(data) for size, data in self.raw.items()}
        self.pending: dict[str, int] = {}  # request id -> size, until its output is fetched

    async def __call__(self, scope: dict[str, Any], receive: Receive, send: Send) -> None:
        assert scope["type"] == "http"
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        method, path = scope["method"], scope["path"]
        if method == "POST" and path == "/generate":
            request_id = str(uuid.uuid4())
            self.pending[request_id] = json.loads(body)["size"]
            await _respond(send, 202, json.dumps({"request_id": request_id}).encode())
        elif method == "GET" and path.startswith("/get_output/"):
            size = self.pending.pop(path.removeprefix("/get_output/"), None)
            if size is None:
                await _respond(send, 404, b'{"error": "unknown request id"}')
            else:
                await _respond(send, 200, self.original[size])
        elif method == "POST" and path == "/v1/jobs":
            await _respond(send, 201, self.raw[json.loads(body)["size"]], b"application/octet-stream")
        elif path == "/server_status":
            await _respond(send, 200, b'{"status": "ready"}')
        else:
            await _respond(send, 404, b'{"error": "not found"}')


async def _respond(send: Send, status: int, body: bytes, content_type: bytes = b"application/json") -> None:
    headers = [(b"content-type", content_type), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def run(host: str, port: int, sizes: tuple[int, ...]) -> None:
    import uvicorn

    uvicorn.run(
        FloorApp(sizes),
        host=host,
        port=port,
        loop="uvloop",
        http="httptools",
        lifespan="off",
        access_log=False,
        log_level="warning",
    )
