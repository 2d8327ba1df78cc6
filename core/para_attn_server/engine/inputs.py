"""A request's pictures and videos, from what the client sent to checked bytes.

Each media field's value is one of: a file's bytes (a multipart part, or a route plugin's
upload), a ``data:`` URL, bare base64, an ``http(s)://`` URL (fetched through the ``fetch``
the server gives, which applies the operator's allowed hosts), or ``job:<id>`` (the output of
an earlier job on this server). Every refusal is an ``InputError`` naming the field (and its
index in a list), so the client gets a 400 and nothing is queued. The bytes of a request count
against ``--max-input-bytes`` in all as they arrive, and each picture's header against
``--max-input-pixels`` before a pixel is decoded (``media.check``).
"""

from __future__ import annotations

import asyncio
import binascii
import os
import re
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from para_attn_server import b64
from para_attn_server.errors import InputError, NotReadyError, OutputGoneError
from para_attn_server.media import MediaField, MediaInfo, check
from para_attn_server.records import JobRecord, JobState

if TYPE_CHECKING:
    from para_attn_server.engine.registry import Job, JobRegistry
    from para_attn_server.settings import JobSettings
    from para_attn_server.storage.outputs import OutputCache, OutputStore

#: ``fetch(url, max_bytes)``: the body of an allowed URL, or ValueError with the reason.
Fetch = Callable[[str, int], Awaitable[bytes]]

JOB_PREFIX = "job:"
# Pixels one request may bring in all, as multiples of --max-input-pixels (a video's frames count).
PIXELS_PER_REQUEST = 8
_DATA_URL = re.compile(r"data:(?P<type>[\w.+-]+/[\w.+-]+)?(?P<params>(?:;[\w.+-]+=[\w.+-]+)*);base64,", re.ASCII)


@dataclass
class ResolvedInputs:
    """Inputs whose media fields hold ``media:<sha256>`` references, the bytes under each
    checksum, and what each is."""

    inputs: dict[str, Any]
    blobs: dict[str, bytes] = field(default_factory=dict)
    media: list[MediaInfo] = field(default_factory=list)


class InputResolver:
    """Turns a request's media fields into checked, stored bytes (``admit``)."""

    def __init__(
        self,
        fields: dict[str, MediaField],
        settings: JobSettings,
        fetch: Fetch | None,
        registry: JobRegistry,
        outputs: OutputCache,
        store: OutputStore,
    ) -> None:
        self.fields = fields
        self.max_bytes = settings.max_input_bytes
        self.max_pixels = settings.max_input_pixels
        self.fetch = fetch
        self.jobs: Mapping[str, Job] = registry.jobs
        self.inputs = registry.inputs
        self.outputs = outputs
        self.store = store
        self.admitting: set[str] = set()  # ids whose inputs are being received now

    def wants(self, inputs: dict[str, Any]) -> bool:
        return any(inputs.get(name) is not None for name in self.fields)

    async def admit(
        self, inputs: dict[str, Any], job_id: str | None
    ) -> tuple[dict[str, Any], str | None, tuple[MediaInfo, ...]]:
        """The inputs with references for their media, the job's id, and what each input is.
        The bytes of a new job are on disk, durably, when this returns (under the id it
        chose when none was given); a known id's are not written again (an idempotent
        resubmit compares the references). NotReadyError if they cannot be written."""
        if job_id is not None and job_id in self.admitting:
            # The same id twice at once (a client's retry): each would clean up the other's files.
            raise NotReadyError("a submit with this id is still being received; try again")
        job_id = job_id or str(uuid.uuid4())
        self.admitting.add(job_id)
        try:
            resolved = await self.resolve(inputs)
            if job_id in self.jobs:
                return resolved.inputs, job_id, tuple(resolved.media)
            try:
                await asyncio.to_thread(self.inputs.save, job_id, resolved.blobs)
            except OSError as exc:
                await asyncio.to_thread(self.inputs.delete, job_id)
                why = exc.strerror or type(exc).__name__
                raise NotReadyError(f"could not store the job's inputs ({why})") from None
            return resolved.inputs, job_id, tuple(resolved.media)
        finally:
            self.admitting.discard(job_id)

    async def discard(self, job_id: str | None, media: tuple[MediaInfo, ...]) -> None:
        """Delete what ``admit`` stored for a job that was then not queued."""
        if media and job_id is not None and job_id not in self.jobs:
            await asyncio.to_thread(self.inputs.delete, job_id)

    async def read(self, record: JobRecord) -> dict[str, bytes] | None:
        """A job's input bytes by checksum, for its ranks (None: it has none); InputGoneError."""
        if not record.media:
            return None
        return await asyncio.to_thread(lambda: {m.sha256: self.inputs.read(record.id, m.sha256) for m in record.media})

    async def resolve(self, inputs: dict[str, Any]) -> ResolvedInputs:
        resolved = ResolvedInputs(dict(inputs))
        budget = self.max_bytes
        # Decoded pixels in all (frames included): what the ranks will hold in memory.
        pixels = PIXELS_PER_REQUEST * self.max_pixels
        for name, spec in self.fields.items():
            value = inputs.get(name)
            if value is None:
                continue
            many = spec.many and isinstance(value, list)
            refs = []
            for index, item in enumerate(value if many else [value]):
                where = f"{name}[{index}]" if many else name
                try:
                    data = await self._bytes(item, budget)
                    if len(data) > budget:
                        raise ValueError(self._too_large())
                    budget -= len(data)
                    info = await asyncio.to_thread(check, data, spec.kind, self.max_pixels, pixels)
                    pixels -= info.width * info.height * info.frames
                except ValueError as exc:
                    raise InputError(str(exc), where) from None
                if info.sha256 not in resolved.blobs:  # the same picture twice is kept and sent once
                    resolved.blobs[info.sha256] = data
                    resolved.media.append(info)
                refs.append(info.ref)
            resolved.inputs[name] = refs if many else refs[0]
        return resolved

    async def _bytes(self, value: Any, budget: int) -> bytes:
        if isinstance(value, bytes | bytearray | memoryview):
            return bytes(value)
        if not isinstance(value, str):
            raise ValueError(f"must be a picture, not {type(value).__name__}")
        if value.startswith(JOB_PREFIX):
            return await self.output_of(value.removeprefix(JOB_PREFIX), budget)
        if value.startswith(("http://", "https://")):
            if self.fetch is None:
                raise ValueError("is a URL, and this server fetches none (its operator allows no --input-allow-host)")
            return await self.fetch(value, budget)
        text = value
        if value.startswith("data:"):
            match = _DATA_URL.match(value)
            if match is None:
                raise ValueError("is a data: URL that is not base64 ('data:<type>;base64,...')")
            text = value[match.end() :]
        if len(text) > 4 * -(-budget // 3) + 4:  # refused before decoding what cannot fit
            raise ValueError(self._too_large())
        return await asyncio.to_thread(_base64, text)

    async def output_of(self, job_id: str, budget: int) -> bytes:
        """The output of an earlier job of this server (``job:<id>``), or ValueError."""
        job = self.jobs.get(job_id)
        if job is None:
            raise ValueError("names no job this server knows (job:<id>, of a job that succeeded here)")
        if job.state is not JobState.SUCCEEDED:
            raise ValueError(f"names a job that has not succeeded (it is {job.state.value})")
        record = job.record
        if (record.output_size or 0) > budget:
            raise ValueError(self._too_large())
        held = self.outputs.get(job.id)
        if held is not None:
            return await asyncio.to_thread(held.raw)
        if record.output_file is None:
            raise ValueError("names a job whose output is gone")
        try:
            fd = await asyncio.to_thread(
                self.store.open_checked, Path(record.output_file), record.output_size, record.output_sha256
            )
        except OutputGoneError:
            raise ValueError("names a job whose output is gone") from None
        with os.fdopen(fd, "rb") as file:
            return await asyncio.to_thread(file.read)

    def _too_large(self) -> str:
        return f"takes the request past --max-input-bytes ({self.max_bytes} bytes of pictures in all)"


def _base64(text: str) -> bytes:
    """Strict base64, also as tools wrap it in lines. Blocking (tens of MB)."""
    try:
        data = text.encode("ascii")
    except UnicodeEncodeError:
        raise ValueError("is not base64, a data: URL, an http(s):// URL or job:<id>") from None
    for attempt in (data, data.translate(None, b" \t\r\n\f\v")):
        try:
            return b64.decode(attempt)
        except binascii.Error:
            continue
    raise ValueError("is not base64, a data: URL, an http(s):// URL or job:<id>")
