"""client: what needs no server (the rest is tests/integration/test_client.py)."""

from __future__ import annotations

import asyncio

from para_attn_client import AsyncClient, Client
from para_attn_client.types import Event, Job

ENDED = Job(id="7d5bb4b4-0c0e-4c55-9d4b-2a4d8f1b6a70", state="succeeded", created_at=1.0, finished_at=2.0)


def test_a_job_that_ended_before_its_answer_is_still_an_event() -> None:
    seen: list[Event] = []
    with Client("http://127.0.0.1:9") as client:  # nothing listens there: no request is made
        assert client._follow(ENDED, seen.append) is ENDED

    assert seen == [ENDED]


def test_the_async_client_shows_it_too() -> None:
    seen: list[Event] = []

    async def follow() -> Job:
        async with AsyncClient("http://127.0.0.1:9") as client:
            return await client._follow(ENDED, seen.append)

    assert asyncio.run(follow()) is ENDED
    assert seen == [ENDED]
