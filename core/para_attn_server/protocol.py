"""Messages between the server process and the rank processes, grouped by direction.

Every rank keeps one TCP connection to the server's control listener. Frames are a 4-byte
big-endian length followed by a msgpack-encoded message. Only rank 0 receives jobs; every
rank sends heartbeats and reports how each job ended on its side, so the server can tell a
consistent group from one that has a rank stuck in a collective.
"""

from __future__ import annotations

import socket
import struct
from typing import Any, Literal

import msgspec

from para_attn_server.adapters import AdapterReport
from para_attn_server.lorafiles import AdapterFit

# ---- rank -> server -------------------------------------------------------------------


class Hello(msgspec.Struct, tag="hello", frozen=True):
    rank: int
    world_size: int
    token: str
    generation: int
    pid: int
    hostname: str
    node: str = ""  # RankSpec.node: the joined host's name, "" on the server's own host
    join_token: str = ""  # RankSpec.join_token


class SetupDone(msgspec.Struct, tag="setup_done", frozen=True):
    rank: int
    adapter_fit: AdapterFit | None = None  # rank 0's, when the predictor applies adapters


class SetupFailed(msgspec.Struct, tag="setup_failed", frozen=True):
    rank: int
    error: str


class Heartbeat(msgspec.Struct, tag="heartbeat", frozen=True):
    rank: int


class Progress(msgspec.Struct, tag="progress", frozen=True):
    job_id: str
    step: int
    total: int | None


class Preview(msgspec.Struct, tag="preview", frozen=True):
    """Rank 0's picture of a job after ``step`` (see ``previews``)."""

    job_id: str
    step: int
    jpeg: bytes


JobStatus = Literal["succeeded", "failed", "cancelled"]


class JobEnded(msgspec.Struct, tag="job_ended", frozen=True):
    job_id: str
    rank: int
    status: JobStatus
    error: str | None = None
    output: bytes | None = None  # only rank 0 carries the output (on the wire: after the frame)
    file_type: str | None = None
    base64: bool = False  # ``output`` is base64 text (see predictor.Output)
    output_size: int = 0  # on the wire: this many bytes of output follow the frame
    adapters: AdapterReport | None = None  # rank 0's adapter cache after the job, when it has one


RankMessage = Hello | SetupDone | SetupFailed | Heartbeat | Progress | Preview | JobEnded

# ---- server -> rank -------------------------------------------------------------------


class BatchItem(msgspec.Struct, frozen=True):
    """A job that runs in the same pipeline call as a ``RunJob``'s own (its leader's)."""

    job_id: str
    inputs: dict[str, Any]


class RunJob(msgspec.Struct, tag="run", frozen=True):
    """A job for every rank; with ``batch``, the leader of the jobs run as one call.

    A batch's progress reports carry the leader's id; its previews, the id of the job they
    show. Rank 0 ends a batch that ran with each other job's ``JobEnded`` (its own output,
    or failed), then the leader's; the other ranks end it with the leader's alone.
    """

    job_id: str
    inputs: dict[str, Any]
    media: dict[str, bytes] = {}  # the input pictures' bytes by SHA-256 (``media:<sha256>`` in inputs), all jobs'
    batch: list[BatchItem] = []  # the jobs beside the leader, in order


class CancelJob(msgspec.Struct, tag="cancel", frozen=True):
    job_id: str


class Shutdown(msgspec.Struct, tag="shutdown", frozen=True):
    pass


ServerMessage = RunJob | CancelJob | Shutdown

# ---- framing --------------------------------------------------------------------------

HEADER = struct.Struct(">I")
MAX_FRAME = 2**32 - 1

_encoder = msgspec.msgpack.Encoder()
rank_message_decoder = msgspec.msgpack.Decoder(RankMessage)
server_message_decoder = msgspec.msgpack.Decoder(ServerMessage)


def encode_frame(message: msgspec.Struct) -> bytearray:
    # Encoded behind a reserved header in one buffer: a large output is copied once, not twice.
    frame = bytearray(HEADER.size)
    _encoder.encode_into(message, frame, HEADER.size)
    size = len(frame) - HEADER.size
    if size > MAX_FRAME:
        raise ValueError(f"message of {size} bytes exceeds the frame limit")
    HEADER.pack_into(frame, 0, size)
    return frame


def wire(message: RankMessage) -> tuple[bytearray, bytes | None]:
    """What a rank sends for ``message``: its frame, and an output's bytes to send after it
    as they are (copying megabytes into the frame cost more CPU than sending them)."""
    if isinstance(message, JobEnded) and message.output is not None:
        output = message.output
        return encode_frame(msgspec.structs.replace(message, output=None, output_size=len(output))), output
    return encode_frame(message), None


def recv_exactly(sock: socket.socket, n: int) -> bytes | None:
    """Blocking read of exactly ``n`` bytes; ``None`` when the peer closed."""
    buf = bytearray(n)
    view = memoryview(buf)
    got = 0
    while got < n:
        k = sock.recv_into(view[got:], n - got)
        if k == 0:
            return None
        got += k
    return bytes(buf)


def recv_server_message(sock: socket.socket) -> ServerMessage | None:
    header = recv_exactly(sock, HEADER.size)
    if header is None:
        return None
    (size,) = HEADER.unpack(header)
    payload = recv_exactly(sock, size)
    if payload is None:
        return None
    message: ServerMessage = server_message_decoder.decode(payload)
    return message
