"""Observers of job events in the server process.

The job service tells two kinds of observer about its jobs: plugins' ``job_state_changed``
hooks (one per server process) and the ``JobObserver`` callables (job listeners) that one
app's objects add with ``JobService.add_listener`` (a metrics registry or a webhook sender
lives as long as its app, and several apps may share a process). An observer's error is
logged and swallowed: it must never break the job it watches.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from para_attn_server.plugin.manager import Plugins
    from para_attn_server.records import JobRecord

log = logging.getLogger("para_attn_server.jobs")

#: ``observer(kind, record)``: ``kind`` is ``"state"`` (the record entered a new state) or
#: ``"progress"`` (a step boundary passed: ``record.step`` of ``record.total``); more kinds
#: may come (previews), so an observer ignores kinds it does not know.
JobObserver = Callable[[str, "JobRecord"], None]


class JobObservers:
    """Both kinds of observer, told of each job event in turn."""

    def __init__(self, plugins: Plugins) -> None:
        self.plugins = plugins
        self._added: list[JobObserver] = []

    def add(self, observer: JobObserver) -> Callable[[], None]:
        """Call ``observer`` on every job event from now on; returns what removes it."""
        self._added.append(observer)
        return lambda: self._added.remove(observer)

    def notify(self, kind: str, record: JobRecord) -> None:
        if kind == "state":
            try:
                self.plugins.job_state_changed(record)
            except Exception:
                log.exception("job_state_changed hook failed")
        for observer in list(self._added):
            try:
                observer(kind, record)
            except Exception:
                log.exception("job listener %r failed on a %s event", observer, kind)
