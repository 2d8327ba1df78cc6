"""Job ids in the order the jobs were created, for listing them newest first with a cursor.

Jobs are created in order, so the order is a list appended to; an index from id to place
finds a cursor at once. A page then costs the jobs it walks past, not a sort of them all.
"""

from __future__ import annotations

from collections.abc import Container, Iterator


class CreationOrder:
    def __init__(self) -> None:
        self._ids: list[str] = []  # oldest first
        self._place: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self._ids)

    def __contains__(self, job_id: object) -> bool:
        return job_id in self._place

    def add(self, job_id: str) -> None:
        """Record a job just created (the newest)."""
        self._place[job_id] = len(self._ids)
        self._ids.append(job_id)

    def keep(self, alive: Container[str]) -> None:
        """Drop the ids not in ``alive`` (jobs forgotten after their TTL)."""
        self._ids = [job_id for job_id in self._ids if job_id in alive]
        self._place = {job_id: place for place, job_id in enumerate(self._ids)}

    def older_than(self, job_id: str | None) -> Iterator[str]:
        """Ids newest first, starting after ``job_id`` (from the newest when None).
        Raises KeyError for an id it does not hold."""
        ids = self._ids
        start = len(ids) if job_id is None else self._place[job_id]
        return (ids[place] for place in range(start - 1, -1, -1))
