"""The server's side of live previews: the latest JPEG of each job, held in memory.

Ranks make and send them (``para_attn_server.rank.previews``); the registry keeps them here
within a budget of bytes in all, until the job is forgotten.
"""

from __future__ import annotations

from collections import OrderedDict


class PreviewStore:
    """The latest preview of each job, ``(step, jpeg)``, within ``budget`` bytes in all.

    Past the budget the previews updated longest ago go first: those of jobs that ended,
    before those of running jobs.
    """

    def __init__(self, budget: int) -> None:
        self.budget = budget
        self.size = 0
        self._entries: OrderedDict[str, tuple[int, bytes]] = OrderedDict()

    def put(self, job_id: str, step: int, jpeg: bytes) -> None:
        self.forget(job_id)
        self._entries[job_id] = (step, jpeg)
        self.size += len(jpeg)
        while self.size > self.budget and self._entries:
            self.forget(next(iter(self._entries)))

    def get(self, job_id: str) -> tuple[int, bytes] | None:
        return self._entries.get(job_id)

    def forget(self, job_id: str) -> None:
        entry = self._entries.pop(job_id, None)
        if entry is not None:
            self.size -= len(entry[1])
