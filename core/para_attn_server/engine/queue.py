"""The queue of jobs waiting for a group: higher priority first, first come first among equals.

A sorted list keyed by (-priority, arrival): insertion costs a bisect and a shift, which
for a bounded queue (``--max-queue``) is less than any heap bookkeeping for ``remove``
(a cancel) and ``index`` (a job's queue position), which a heap would make a scan anyway.
"""

from __future__ import annotations

import bisect
import itertools
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

J = TypeVar("J")
REQUEUED = -1000  # sorts before any priority (-100..100 negated)


class JobQueue(Generic[J]):
    def __init__(self, priority: Callable[[J], int] = lambda job: 0) -> None:
        self._priority = priority
        self._keys: list[tuple[int, int]] = []  # (-priority, arrival), sorted
        self._jobs: list[J] = []  # in the same order
        self._arrivals = itertools.count()

    def append(self, job: J) -> None:
        """Queue ``job`` behind every job of its priority or higher."""
        key = (-self._priority(job), next(self._arrivals))
        place = bisect.bisect_right(self._keys, key)
        self._keys.insert(place, key)
        self._jobs.insert(place, job)

    def requeue(self, job: J) -> None:
        """Queue ``job`` ahead of every job waiting, whatever their priorities (a job whose
        run was cut short goes next), behind any requeued before it."""
        key = (REQUEUED, next(self._arrivals))
        place = bisect.bisect_right(self._keys, key)
        self._keys.insert(place, key)
        self._jobs.insert(place, job)

    def popleft(self) -> J:
        del self._keys[0]
        return self._jobs.pop(0)

    def remove(self, job: J) -> None:
        """Take ``job`` out (ValueError if it is not queued)."""
        place = self.index(job)
        del self._keys[place]
        del self._jobs[place]

    def index(self, job: J) -> int:
        """How many jobs run before ``job`` (ValueError if it is not queued)."""
        for place, queued in enumerate(self._jobs):
            if queued is job:
                return place
        raise ValueError("not queued")

    def by_priority(self) -> dict[int, int]:
        """Jobs waiting, by priority (a requeued job by its own)."""
        counts: dict[int, int] = {}
        for job in self._jobs:
            priority = self._priority(job)
            counts[priority] = counts.get(priority, 0) + 1
        return counts

    def __getitem__(self, place: int) -> J:
        return self._jobs[place]

    def __len__(self) -> int:
        return len(self._jobs)

    def __iter__(self) -> Iterator[J]:
        return iter(list(self._jobs))  # a copy: callers may remove as they walk
