"""Job ids in the order the jobs were created, for listing them newest first with a cursor.

Jobs are created in order, so the order is a list appended to; an index from id to place
finds a cursor at once. A page then costs the jobs it walks past, not a sort of them all.
Forgotten ids leave the index at once and the list when they make up half of it.
"""

from __future__ import annotations

from collections.abc import Iterator


class CreationOrder:
    def __init__(self) -> None:
        self._ids: list[str | None] = []  # oldest first; None where a forgotten id was
        self._place: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self._place)

    def __contains__(self, job_id: object) -> bool:
        return job_id in self._place

    def add(self, job_id: str) -> None:
        """Record a job just created (the newest)."""
        self._place[job_id] = len(self._ids)
        self._ids.append(job_id)

    def remove(self, job_id: str) -> None:
        place = self._place.pop(job_id, None)
        if place is None:
            return
        self._ids[place] = None
        if len(self._place) * 2 < len(self._ids):
            self._ids = [kept for kept in self._ids if kept is not None]
            self._place = {kept: index for index, kept in enumerate(self._ids) if kept is not None}

    def older_than(self, job_id: str | None) -> Iterator[str]:
        """Ids newest first, starting after ``job_id`` (from the newest when None).
        Raises KeyError for an id it does not hold."""
        ids = self._ids
        start = len(ids) if job_id is None else self._place[job_id]
        return (found for place in range(start - 1, -1, -1) if (found := ids[place]) is not None)
