"""Errors, grouped by audience.

- ``ConfigurationError``: the operator's mistake (bad ``--model``, bad option); the CLI
  prints it and exits non-zero.
- ``InputError``: the client's mistake; the HTTP layer answers 400 naming the field
  (``IdConflictError``, a job id that is taken: 409).
- ``SetupError``: a rank's ``setup`` failed; at first start the server exits non-zero.
- ``JobCancelled``: internal control flow raised inside ``predict`` on every rank at the
  same step boundary; it derives from BaseException so a predictor's ``except Exception``
  cannot swallow it.
"""

from __future__ import annotations


class ParaAttnServerError(Exception):
    """Base class of the errors this package raises on purpose."""


class ConfigurationError(ParaAttnServerError):
    """The server was configured wrongly (unknown model, bad option)."""


class InputError(ParaAttnServerError):
    """A request field is invalid. ``field`` names it (dotted path) when known."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field
        self.message = message

    def __str__(self) -> str:
        return f"{self.field}: {self.message}" if self.field else self.message


class IdConflictError(InputError):
    """A job with the id a client chose exists with other inputs: that id is taken (the
    HTTP layer answers 409; as an ``InputError`` it names the field ``id``)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, "id")


class SetupError(ParaAttnServerError):
    """A rank failed while starting (``setup`` raised, or the process died)."""


class LimitError(ParaAttnServerError):
    """A bound was reached (the queue, event streams); retry after ``retry_after`` seconds."""

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class QueueFullError(LimitError):
    """The bounded job queue is full."""


class NotReadyError(ParaAttnServerError):
    """The worker group has not finished its first setup, or the server is draining."""


class JournalError(ParaAttnServerError):
    """A job's record could not be written to the journal: the job is not acknowledged."""


class OutputGoneError(ParaAttnServerError):
    """A finished job's output can no longer be served (lost with a full disk, deleted, or
    changed on disk); the message says why without naming server paths."""


class JobCancelled(BaseException):
    """Raised on every rank at the same step boundary when a job is cancelled."""
