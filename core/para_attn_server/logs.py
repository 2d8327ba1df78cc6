"""Logs: one format for every process (server, ranks, ``join``), and a line per job event.

``configure_logging(level, fmt)`` gives a process one handler, on stderr, in the text or the
JSON format (``--log-format``), and routes through it what others log: uvicorn and Litestar
(given no handler of their own: ``http.listener``, ``http``), torch (which adds one when
imported), libraries imported later (``SharedLogger``) and Python's ``warnings``. JSON is one
object a line: ``time`` (ISO 8601, UTC), ``level``, ``logger``, ``message``, the process's
``role`` (and a rank's ``group`` and ``rank``), ``exc_info`` as text, and a record's
``extra`` fields (``job_id`` on the lines of ``log_jobs``).
"""

from __future__ import annotations

import datetime
import json
import logging
import sys
import warnings
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, TextIO

if TYPE_CHECKING:
    from para_attn_server.engine.service import JobService
    from para_attn_server.records import JobRecord

FORMATS = ("text", "json")
TEXT_FORMAT = "%(asctime)s %(name)s %(levelname)s %(message)s"
#: Loggers given handlers of their own before ``configure_logging`` runs (torch: at import).
LIBRARY_LOGGERS = ("uvicorn", "uvicorn.error", "uvicorn.access", "litestar", "torch", "torch.distributed")
#: This project's loggers: every rank shows their lines (``rank_warnings``).
OWN_LOGGERS = "para_attn_"
# What every LogRecord has: anything else on a record came from ``extra=`` (but uvicorn's
# color_message: its message again, in terminal colours).
_RECORD_FIELDS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message", "asctime", "color_message"
}  # fmt: skip

_configured = {"format": "text"}  # what configure_logging set in this process


def current_format() -> str:
    """The format this process logs in: what the ranks it starts use too (``RankSpec``)."""
    return _configured["format"]


class JsonFormatter(logging.Formatter):
    """One JSON object a line; ``context`` (the process's role, group, rank) in each."""

    def __init__(self, context: Mapping[str, object] | None = None) -> None:
        super().__init__()
        self.context = dict(context or {})

    def format(self, record: logging.LogRecord) -> str:
        when = datetime.datetime.fromtimestamp(record.created, datetime.UTC)
        line: dict[str, Any] = {
            "time": when.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            **self.context,
        }
        line.update((key, value) for key, value in vars(record).items() if key not in _RECORD_FIELDS)
        if record.exc_info:
            line["exc_info"] = self.formatException(record.exc_info)
        elif record.exc_text:
            line["exc_info"] = record.exc_text
        if record.stack_info:
            line["stack_info"] = self.formatStack(record.stack_info)
        # default=str: an extra that JSON cannot hold is shown as text rather than lost.
        return json.dumps(line, default=str, ensure_ascii=False)


def formatter(fmt: str, context: Mapping[str, object] | None = None) -> logging.Formatter:
    """The formatter of ``fmt`` (``text`` or ``json``); ValueError naming the flag otherwise."""
    if fmt == "json":
        return JsonFormatter(context)
    if fmt == "text":
        label = " ".join(f"{key} {value}" for key, value in (context or {}).items() if key != "role")
        return logging.Formatter(TEXT_FORMAT.replace("%(name)s", f"%(name)s [{label}]") if label else TEXT_FORMAT)
    raise ValueError(f"--log-format must be one of {', '.join(FORMATS)}, not {fmt!r}")


def configure_logging(
    level: str,
    fmt: str,
    *,
    role: str = "server",
    context: Mapping[str, object] | None = None,
    stream: TextIO | None = None,
    force: bool = False,
) -> None:
    """This process's logging: one handler on ``stream`` (stderr) in ``fmt`` at ``level``, for
    every logger (ours, uvicorn's, Litestar's, torch's, and those libraries make later) and
    for ``warnings``. ``role`` (server, rank, join) and ``context`` (a rank's group and rank)
    are in every JSON line. An application that gave the root logger handlers of its own
    (one that runs ``ParaAttentionServer`` in its process) keeps them, as with
    ``logging.basicConfig``, unless ``force``; everything is still routed to them."""
    handler = _OneHandler(stream or sys.stderr)
    handler.setFormatter(formatter(fmt, {"role": role, **(context or {})}))  # ValueError first
    root = logging.getLogger()
    if force or all(isinstance(old, _OneHandler) for old in root.handlers):
        for old in list(root.handlers):
            root.removeHandler(old)
        root.addHandler(handler)
        root.setLevel(level.upper())
        _configured["format"] = fmt
    adopt_library_loggers(LIBRARY_LOGGERS)
    logging.setLoggerClass(SharedLogger)
    warnings.showwarning = _log_warning


class _OneHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """The handler ``configure_logging`` installs (a second call replaces it)."""


def adopt_library_loggers(names: tuple[str, ...] = ()) -> None:
    """Route through the root's handler the loggers ``names`` (whatever their handlers) and
    every logger that prints to stderr or stdout by a handler of its own."""
    loggers = [logging.getLogger(name) for name in names]
    loggers += [obj for obj in logging.Logger.manager.loggerDict.values() if isinstance(obj, logging.Logger)]
    for logger in loggers:
        printing = [h for h in logger.handlers if _prints(h) or logger.name in names]
        for old in printing:
            logger.removeHandler(old)
        if printing or logger.name in names:
            logger.propagate = True


class SharedLogger(logging.Logger):
    """The class of the loggers made after ``configure_logging``: a handler of a library's
    own that prints to stderr or stdout is refused, and the logger keeps propagating, so its
    lines go through the process's handler. diffusers and transformers add one (and stop
    propagating) when imported, which is after the ranks configure their logging."""

    _adopted = False

    def addHandler(self, hdlr: logging.Handler) -> None:  # noqa: N802 (logging's name)
        if _prints(hdlr):
            self._adopted = True
        else:
            super().addHandler(hdlr)

    @property
    def propagate(self) -> bool:
        return self._adopted or self.__dict__.get("_propagate", True)

    @propagate.setter
    def propagate(self, value: bool) -> None:
        self._propagate = value


def _prints(handler: logging.Handler) -> bool:
    stream = getattr(handler, "stream", None)
    return isinstance(handler, logging.StreamHandler) and stream in (
        sys.stderr,
        sys.stdout,
        sys.__stderr__,
        sys.__stdout__,
    )


def _log_warning(
    message: Warning | str,
    category: type[Warning],
    filename: str,
    lineno: int,
    file: TextIO | None = None,
    line: str | None = None,
) -> None:
    """``warnings.showwarning``: a line of the "py.warnings" logger (``logging.captureWarnings``
    would add the source line, on a line of its own)."""
    if file is not None:  # asked for somewhere else: there, as Python would
        file.write(warnings.formatwarning(message, category, filename, lineno, line))
        return
    logging.getLogger("py.warnings").warning("%s:%d: %s: %s", filename, lineno, category.__name__, message)


class _OursOrErrors(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.ERROR or record.name.startswith(OWN_LOGGERS)


def rank_warnings(first: bool) -> None:
    """A rank's warnings from libraries and Python's ``warnings`` (a deprecation in diffusers
    or torch): the host's ``first`` rank shows them, each once (Python's default: once per
    place in the code); the others, which run the same code on the same inputs and would
    repeat them, show only this project's lines and errors."""
    if not first:
        for handler in logging.getLogger().handlers:
            handler.addFilter(_OursOrErrors())


# ---- a line per job event ----------------------------------------------------------------

jobs_log = logging.getLogger("para_attn_server.jobs")


def log_jobs(service: JobService) -> Callable[[], None]:
    """Log a line when each job is accepted, starts and ends, with its ``job_id`` as a field;
    returns what stops it."""
    return service.add_listener(job_line)


def job_line(kind: str, record: JobRecord) -> None:
    """The listener of ``log_jobs`` (``observers.JobObserver``)."""
    if kind != "state":
        return
    extra: dict[str, object] = {"job_id": record.id, "state": record.state.value}
    if record.state == "queued":
        if not record.attempts:  # queued again after a lost rank: the service says so itself
            jobs_log.info("job %s accepted", record.id, extra=extra)
    elif record.state == "running":
        extra.update(group=record.group, host=record.host)
        jobs_log.info("job %s started on group %s (host %s)", record.id, record.group, record.host, extra=extra)
    elif record.terminal:
        # A job that ran: how long it ran; one that never started: how long it waited.
        began = record.started_at if record.started_at is not None else record.created_at
        extra["seconds"] = seconds = round((record.finished_at or began) - began, 3)
        level = logging.INFO if record.state in ("succeeded", "cancelled") else logging.WARNING
        error = f": {record.error}" if record.error else ""
        jobs_log.log(level, "job %s %s in %.2f s%s", record.id, record.state.value, seconds, error, extra=extra)
