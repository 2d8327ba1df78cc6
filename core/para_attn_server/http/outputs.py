"""Answers that carry a finished job's output: its bytes (``/v1/jobs/{id}/output``) or the
original API's base64 JSON (``/get_output``).

Recent outputs come from memory; older ones from their file, checked against the size and
checksum recorded when it was written and then streamed from the descriptor that was checked
in chunks, so a slow client holds a chunk, not the whole output: the next chunk is read only
once the last one left the server's write buffer (``_paced``). An output that is gone
answers 410 with the reason and no server path.

Outputs are the predictor's bytes, served from the server's own origin: every answer that
carries one says ``nosniff`` (no browser guesses a page from the bytes) and has a sandboxing
Content-Security-Policy (nothing that renders anyway runs a script or reaches the origin),
and only a picture, a video, a sound, plain text or JSON is ``inline``: HTML, SVG,
JavaScript, XML and every other type are attachments (``served_headers``).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, BinaryIO

import msgspec
from litestar import Response
from litestar.response import Stream

from para_attn_server import b64
from para_attn_server.engine.registry import GONE, Job
from para_attn_server.errors import OutputGoneError
from para_attn_server.http.dependencies import Service
from para_attn_server.storage.outputs import content_type

# About what one stalled reader holds (twice this, measured). Each chunk of a file is a thread hop.
FILE_CHUNK = 512 * 1024
BASE64_CHUNK = 3 * FILE_CHUNK // 4  # bytes encoded at once: a multiple of 3, so chunks join without padding
ENCODED_CHUNK = FILE_CHUNK  # base64 text sent as it is held, in chunks of this size
# Base64 text up to this size decodes on the event loop: in less time than a thread hop takes.
INLINE_DECODE = 64 * 1024
OUTPUT_POLICY = "sandbox; default-src 'none'; img-src 'self' data:; media-src 'self'; style-src 'unsafe-inline'"
SERVED = {"X-Content-Type-Options": "nosniff", "Content-Security-Policy": OUTPUT_POLICY}
PASSIVE = ("image/", "video/", "audio/")  # shown inline, unless XML (SVG)
PASSIVE_TYPES = frozenset({"text/plain", "application/json"})


async def file_of(service: Service, job: Job) -> BinaryIO:
    """The job's output file, open and checked; OutputGoneError when it cannot be served."""
    record = job.record
    if record.output_file is None:
        raise OutputGoneError((record.error or GONE).removeprefix(f"{GONE}: "))
    path = Path(record.output_file)
    fd = await asyncio.to_thread(service.store.open_checked, path, record.output_size, record.output_sha256)
    return os.fdopen(fd, "rb")  # closed when read to the end, or when collected


async def output_response(
    service: Service, job: Job, status_code: int = 200, headers: dict[str, str] | None = None
) -> Response[Any]:
    record = job.record
    assert record.file_type is not None
    media = content_type(record.file_type)
    headers = {**served_headers(f"{job.id}.{record.file_type}", media), **(headers or {})}
    held = service.held_output(job)
    if held is not None:
        # Base64 text is decoded here, once, for a client that wants the bytes.
        data = await asyncio.to_thread(held.raw) if held.base64 and len(held.data) > INLINE_DECODE else held.raw()
        return Response(data, media_type=media, status_code=status_code, headers=headers)
    file = await file_of(service, job)
    headers["Content-Length"] = str(record.output_size)
    chunks = _paced(_file_chunks(file, FILE_CHUNK))
    return Stream(chunks, media_type=media, status_code=status_code, headers=headers)


def served_headers(filename: str, media: str) -> dict[str, str]:
    """The headers of an answer that is an output: inline only for passive types."""
    kind = media.partition(";")[0].strip().lower()
    passive = kind in PASSIVE_TYPES or (kind.startswith(PASSIVE) and "xml" not in kind)
    return {"Content-Disposition": f'{"inline" if passive else "attachment"}; filename="{filename}"', **SERVED}


async def base64_response(service: Service, job: Job) -> Response[Any]:
    """``{"output": base64, "file_type": ..., "output_path"?: ...}``, built as bytes: a JSON
    encoder would copy the base64 again."""
    record = job.record
    extra = b"" if record.output_path is None else b',"output_path":' + msgspec.json.encode(record.output_path)
    head, tail = b'{"output":"', b'","file_type":' + msgspec.json.encode(record.file_type) + extra + b"}"
    held = service.held_output(job)
    if held is not None and len(held.data) <= BASE64_CHUNK:
        text = held.data if held.base64 else b64.encode(held.data)
        return Response(head + text + tail, media_type="application/json", headers=SERVED)
    if held is not None and held.base64:  # the predictor's own base64: sent as it came
        length = len(head) + len(held.data) + len(tail)
        body = _framed(head, _memory_chunks(held.data, ENCODED_CHUNK), tail, encode=False)
    else:
        if held is None:
            file = await file_of(service, job)
            size, chunks = record.output_size or 0, _file_chunks(file, BASE64_CHUNK)
        else:
            size, chunks = len(held.data), _memory_chunks(held.data, BASE64_CHUNK)
        length = len(head) + 4 * -(-size // 3) + len(tail)
        body = _framed(head, chunks, tail, encode=True)
    return Stream(_paced(body), media_type="application/json", headers={"Content-Length": str(length), **SERVED})


async def _framed(head: bytes, chunks: AsyncIterator[bytes], tail: bytes, *, encode: bool) -> AsyncIterator[bytes]:
    yield head
    async for chunk in chunks:
        # BASE64_CHUNK is a multiple of 3: the chunks encode with no padding between them.
        yield b64.encode(chunk) if encode else chunk
    yield tail


async def _paced(chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """``chunks``, each followed by an empty one. The ASGI server sends an empty body event
    only once the connection's write buffer drained (uvicorn waits for that before every
    send), so the next chunk is read and encoded only then: a reader that stops reading holds
    the chunk in the buffer, not also the next one prepared behind it."""
    async for chunk in chunks:
        yield chunk
        yield b""


async def _memory_chunks(data: bytes, size: int) -> AsyncIterator[bytes]:
    view = memoryview(data)
    for start in range(0, len(view), size):
        yield view[start : start + size].tobytes()


async def _file_chunks(file: BinaryIO, size: int) -> AsyncIterator[bytes]:
    with file:
        while chunk := await asyncio.to_thread(file.read, size):
            yield chunk
