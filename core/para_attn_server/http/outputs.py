"""Answers that carry a finished job's output: its bytes (``/v1/jobs/{id}/output``) or the
original API's base64 JSON (``/get_output``).

Recent outputs come from memory; older ones from their file, checked against the size and
checksum recorded when it was written and then streamed from the descriptor that was checked
in chunks, so a slow client holds a chunk, not the whole output. An output that is gone
answers 410 with the reason and no server path.
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
from para_attn_server.storage.outputs import READ_CHUNK, content_type

FILE_CHUNK = 8 * 1024 * 1024  # each chunk of a file is a thread hop: few, large ones
ENCODED_CHUNK = 4 * READ_CHUNK // 3  # base64 text sent as it is held, in chunks of this size
# Base64 text up to this size decodes on the event loop: in less time than a thread hop takes.
INLINE_DECODE = 64 * 1024


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
    headers = {"Content-Disposition": f'inline; filename="{job.id}.{record.file_type}"', **(headers or {})}
    held = service.held_output(job)
    if held is not None:
        # Base64 text is decoded here, once, for a client that wants the bytes.
        data = await asyncio.to_thread(held.raw) if held.base64 and len(held.data) > INLINE_DECODE else held.raw()
        return Response(data, media_type=media, status_code=status_code, headers=headers)
    file = await file_of(service, job)
    headers["Content-Length"] = str(record.output_size)
    return Stream(_file_chunks(file, FILE_CHUNK), media_type=media, status_code=status_code, headers=headers)


async def base64_response(service: Service, job: Job) -> Response[Any]:
    """``{"output": base64, "file_type": ..., "output_path"?: ...}``, built as bytes: a JSON
    encoder would copy the base64 again."""
    record = job.record
    extra = b"" if record.output_path is None else b',"output_path":' + msgspec.json.encode(record.output_path)
    head, tail = b'{"output":"', b'","file_type":' + msgspec.json.encode(record.file_type) + extra + b"}"
    held = service.held_output(job)
    if held is not None and len(held.data) <= READ_CHUNK:
        text = held.data if held.base64 else b64.encode(held.data)
        return Response(head + text + tail, media_type="application/json")
    if held is not None and held.base64:  # the predictor's own base64: sent as it came
        length = len(head) + len(held.data) + len(tail)
        body = _framed(head, _memory_chunks(held.data, ENCODED_CHUNK), tail, encode=False)
    else:
        if held is None:
            file = await file_of(service, job)
            size, chunks = record.output_size or 0, _file_chunks(file, READ_CHUNK)
        else:
            size, chunks = len(held.data), _memory_chunks(held.data, READ_CHUNK)
        length = len(head) + 4 * -(-size // 3) + len(tail)
        body = _framed(head, chunks, tail, encode=True)
    return Stream(body, media_type="application/json", headers={"Content-Length": str(length)})


async def _framed(head: bytes, chunks: AsyncIterator[bytes], tail: bytes, *, encode: bool) -> AsyncIterator[bytes]:
    yield head
    async for chunk in chunks:
        # READ_CHUNK is a multiple of 3: the chunks encode with no padding between them.
        yield b64.encode(chunk) if encode else chunk
    yield tail


async def _memory_chunks(data: bytes, size: int) -> AsyncIterator[bytes]:
    view = memoryview(data)
    for start in range(0, len(view), size):
        yield view[start : start + size].tobytes()


async def _file_chunks(file: BinaryIO, size: int) -> AsyncIterator[bytes]:
    with file:
        while chunk := await asyncio.to_thread(file.read, size):
            yield chunk
