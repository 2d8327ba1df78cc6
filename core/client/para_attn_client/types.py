"""What ``para_attn_client``'s clients hand back: jobs, progress, pages, results and errors,
and how an HTTP answer of the server becomes one of them. No I/O: the sync and the async
client share all of it.
"""

from __future__ import annotations

import email.utils
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import httpx
import msgspec

from para_attn_client.wire import AppliedLora, JobList, JobView

# The client reads exactly what the server sends: one definition of each (wire.py).
Job = JobView
JobPage = JobList
MAX_RETRY_WAIT = 30.0  # seconds: a longer Retry-After is capped
LORAS = "loras"  # the request field naming the adapters a job applies
T = TypeVar("T")
_NAMED = re.compile(r"([A-Za-z_][\w.\[\]]*): ")  # "steps: Expected `int` >= 0"
_UNKNOWN = re.compile(r"unknown field `([^`]+)`")  # "Object contains unknown field `colour`"


class Progress(msgspec.Struct, frozen=True):
    """A step boundary passed: ``step`` of ``total`` (None when the predictor does not say)."""

    step: int
    total: int | None = None


Event = Job | Progress
"""What ``events`` yields: the job when its state changed, progress between."""


@dataclass(frozen=True)
class Result:
    """What ``generate`` returns: the job (succeeded) and its output."""

    job: Job
    output: bytes
    content_type: str

    def save(self, path: str | Path) -> Path:
        """Write the output to ``path`` (a directory: ``<job id>.<file type>`` in it)."""
        target = Path(path)
        if target.is_dir():
            target = target / f"{self.job.id}.{self.job.file_type or 'bin'}"
        target.write_bytes(self.output)
        return target


# ---- errors ------------------------------------------------------------------------------------
# Named for what happened, as the server's API says it (N818 is off for this module).


class ClientError(Exception):
    """Base of the errors the client raises on purpose; ``status`` is the HTTP code, when
    the server answered."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


class InputRejected(ClientError):
    """400 (or 413): the server refused the inputs. ``field`` names the one at fault when
    the server said (in the answer's ``field``, as the message's ``name: `` prefix, or as
    an unknown field in backquotes); ``reason`` is the message without a ``name: `` prefix."""

    def __init__(self, message: str, field: str | None = None, status: int = 400) -> None:
        super().__init__(message, status)
        named = _NAMED.match(message) or _UNKNOWN.search(message)
        self.field = field or (named[1] if named else None)
        prefix = f"{self.field}: "
        self.reason = message[len(prefix) :] if self.field and message.startswith(prefix) else message


class Unauthorized(ClientError):
    """401: the API key is missing or wrong."""


class NotFound(ClientError):
    """404: no such job (ids are forgotten a while after the job ended)."""


class Conflict(ClientError):
    """409: the job is not in a state that allows this (cancel of an ended job, output of
    an unfinished one), or its id is taken by a job with other inputs."""


class RetryLater(ClientError):
    """The server cannot take the request now; try again after ``retry_after`` seconds."""

    def __init__(self, message: str, retry_after: float, status: int) -> None:
        super().__init__(message, status)
        self.retry_after = retry_after


class QueueFull(RetryLater):
    """429: the server's queue is full."""


class NotReady(RetryLater):
    """503: the server is starting (its ranks are setting up) or shutting down."""


class ServerUnreachable(ClientError):
    """No answer: the connection failed, broke or timed out (``__cause__`` is httpx's error)."""


class ServerError(ClientError):
    """Any other answer the client did not expect (a 500, a proxy's error page)."""


class JobFailed(ClientError):
    """The job ended without an output: it failed (``job.error`` says why) or, as the
    subclass ``JobCancelled``, it was cancelled."""

    def __init__(self, job: Job) -> None:
        super().__init__(f"job {job.id} {job.state}: {job.error or 'no reason given'}")
        self.job = job


class JobCancelled(JobFailed):
    """The job was cancelled (by a client, or by the server shutting down)."""


# ---- answers -----------------------------------------------------------------------------------


def error_from(response: httpx.Response) -> ClientError:
    """The error an answer of status >= 400 means. Reads the body: for a streamed answer,
    read it first."""
    status = response.status_code
    body: dict[str, Any] = {}
    try:
        decoded = msgspec.json.decode(response.content)
        if isinstance(decoded, dict):
            body = decoded
    except msgspec.DecodeError:
        pass
    message = str(body.get("error") or response.text.strip()[:200] or response.reason_phrase or f"HTTP {status}")
    field = body.get("field") if isinstance(body.get("field"), str) else None
    if status in (400, 413, 422):
        return InputRejected(message, field, status)
    if status == 401:
        return Unauthorized(message, status)
    if status == 404:
        return NotFound(message, status)
    if status == 409:
        return Conflict(message, status)
    if status == 429:
        return QueueFull(message, retry_after(response), status)
    if status == 503:
        return NotReady(message, retry_after(response), status)
    return ServerError(message, status)


def retry_after(response: httpx.Response, default: float = 1.0) -> float:
    """Seconds the ``Retry-After`` header asks for (a number or an HTTP date)."""
    value = response.headers.get("retry-after", "").strip()
    if not value:
        return default
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return default
    return max(0.0, when.timestamp() - time.time())


def retry_delay(attempt: int, error: Exception) -> float | None:
    """Seconds to wait before trying a request again after ``error`` (its ``attempt``-th,
    from 0), or None when trying again cannot help. Every request the clients send may be
    repeated: submit is a PUT with the client's id, cancel and the reads change nothing twice."""
    if isinstance(error, RetryLater):
        return min(error.retry_after, MAX_RETRY_WAIT)
    if isinstance(error, ServerUnreachable):
        return backoff(attempt)
    return None


def backoff(attempt: int) -> float:
    """Seconds before the ``attempt``-th try again (from 0) when the server gave no hint."""
    return min(0.25 * 2.0**attempt, 4.0)


def unreachable(error: httpx.TransportError) -> ServerUnreachable:
    problem = ServerUnreachable(f"no answer from the server ({type(error).__name__}: {error})")
    problem.__cause__ = error
    return problem


def decode_event(kind: str, data: str) -> Event | None:
    """One Server-Sent Event as a Job or Progress; None for kinds this client does not
    know (the server may add some, such as previews)."""
    if kind == "state":
        return msgspec.json.decode(data, type=Job)
    if kind == "progress":
        return msgspec.json.decode(data, type=Progress)
    return None


def decode(response: httpx.Response, kind: type[T]) -> T:
    """The body of a successful answer as ``kind``."""
    return msgspec.json.decode(response.content, type=kind)


def job_inputs(inputs: Mapping[str, Any] | None, fields: dict[str, Any]) -> dict[str, Any]:
    """A request body from a mapping and keyword fields (the keywords win), its ``loras`` as
    the server takes them (``lora_list``)."""
    body = {**(inputs or {}), **fields}
    if LORAS in body:
        body[LORAS] = lora_list(body[LORAS])
    return body


def lora_list(value: Any) -> Any:
    """The ``loras`` field as the server takes it, ``[{"name": ..., "scale": ...}]``, from a
    dict of name -> scale (``{"a": 0.8}``), or a list of such dicts, of (name, scale) pairs
    (``[("a", 0.8)]``) or of a job's ``AppliedLora`` (``loras=job.loras`` applies them again).
    Anything else goes as it is, for the server to refuse naming the field."""
    if isinstance(value, Mapping):
        return [{"name": name, "scale": scale} for name, scale in value.items()]
    return [_lora(item) for item in value] if isinstance(value, list | tuple) else value


def _lora(item: Any) -> Any:
    if isinstance(item, AppliedLora):
        return {"name": item.name, "scale": item.scale}
    if isinstance(item, tuple | list) and len(item) == 2 and isinstance(item[0], str):
        return {"name": item[0], "scale": item[1]}
    return item
