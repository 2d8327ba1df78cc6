"""Job records: the immutable facts about one job, as journaled, shown and observed.

A ``JobRecord`` is replaced, never changed: each state change makes a new one
(``record.evolve(state=...)``). The journal stores records, ``job_state_changed`` hooks
receive them, and every view of a job is built from one.
"""

from __future__ import annotations

import re
from typing import Any

import msgspec

# The job states travel to clients: defined once, with the views, in the client's wire module.
from para_attn_client.wire import TERMINAL, Attempt, JobState
from para_attn_server.media import MediaInfo

__all__ = ["TERMINAL", "Attempt", "JobRecord", "JobState", "public_error"]


class JobRecord(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    inputs: dict[str, Any]
    fingerprint: bytes  # the inputs' canonical encoding: an idempotent resubmit must match it
    created_at: float
    state: JobState = JobState.QUEUED
    started_at: float | None = None
    finished_at: float | None = None
    group: int | None = None  # the worker group that ran it
    step: int | None = None
    total: int | None = None
    error: str | None = None
    file_type: str | None = None
    output_file: str | None = None  # where the output is on disk: the server's copy or the client's file
    output_path: str | None = None  # the client's own output_path, relative to the output directory
    output_size: int | None = None  # bytes, and the checksum, of the output as written to disk
    output_sha256: str | None = None
    reply_with_path: bool = False  # the original API answers with output_path instead of base64
    media: tuple[MediaInfo, ...] = ()  # the input pictures, kept under storage/inputs by checksum
    interrupted: int = 0  # runs cut short by the server's own end (it is queued again after a restart)
    cancel_requested: bool = False  # a cancel asked while it ran: a restart ends it cancelled
    batch_size: int | None = None  # jobs that shared its pipeline call, once it started
    host: str | None = None  # the host of the group that runs or ran it
    attempts: tuple[Attempt, ...] = ()  # its runs cut short by a lost rank or host, in order
    # What plugins still owe its client (the webhooks plugin: its final delivery), journaled
    # with the record: a server that dies first owes them still when it starts again.
    promises: tuple[str, ...] = ()

    def runs(self) -> tuple[Attempt, ...]:
        """Every run: those cut short, then the current or last one (when it is not one of them)."""
        if self.started_at is None or self.group is None:
            return self.attempts
        if self.attempts and self.attempts[-1].started_at == self.started_at:
            return self.attempts  # its last run was cut short too, and it ran no more
        return (*self.attempts, Attempt(self.group, self.host, self.started_at, self.finished_at))

    @property
    def terminal(self) -> bool:
        return self.state in TERMINAL

    def evolve(self, **changes: Any) -> JobRecord:
        return msgspec.structs.replace(self, **changes)


# What a rank's error may say about the machines: gloo/c10d prefix messages with their
# source location ("[/__w/pytorch/.../pair.cc:537] Read error ..."), and OS errors name
# files ("No such file or directory: '/srv/models/x'"). Clients get the message without them.
_SOURCE_LOCATION = re.compile(r"\[[^\]\s]*\.(?:c|cc|cpp|cu|h|hpp|py):\d+\]\s*")
_ABSOLUTE_PATH = re.compile(r"(?<![\w.:/~-])/(?:[\w.@+~-]+/)+[\w.@+~-]*")


def public_error(error: str | None) -> str | None:
    """A job's error as clients see it: without source locations and absolute paths."""
    if not error:
        return error
    return _ABSOLUTE_PATH.sub("<path>", _SOURCE_LOCATION.sub("", error))
