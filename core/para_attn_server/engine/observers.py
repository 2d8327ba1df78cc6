"""Observers of job events in the server process.

The job service tells two kinds of observer about its jobs: plugins' ``job_state_changed``
hooks (one per server process) and listeners that one app's objects add with
``JobService.add_listener`` (a metrics registry or a webhook sender lives as long as its
app, and several apps may share a process). An observer's error is logged and swallowed:
it must never break the job it watches.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from para_attn_server.plugin.manager import Plugins
    from para_attn_server.records import JobRecord

log = logging.getLogger("para_attn_server.jobs")

#: ``listener(kind, record)``: ``kind`` is ``"state"`` (the record entered a new state) or
#: ``"progress"`` (a step boundary passed: ``record.step`` of ``record.total``); more kinds
#: may come (previews), so a listener ignores kinds it does not know.
Listener = Callable[[str, "JobRecord"], None]


class Listeners:
    def __init__(self, plugins: Plugins) -> None:
        self.plugins = plugins
        self._listeners: list[Listener] = []

    def add(self, listener: Listener) -> Callable[[], None]:
        """Call ``listener`` on every job event from now on; returns what removes it."""
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener)

    def notify(self, kind: str, record: JobRecord) -> None:
        if kind == "state":
            try:
                self.plugins.job_state_changed(record)
            except Exception:
                log.exception("job_state_changed hook failed")
        for listener in list(self._listeners):
            try:
                listener(kind, record)
            except Exception:
                log.exception("job listener %r failed on a %s event", listener, kind)
