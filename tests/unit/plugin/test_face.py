"""The plugin face (``para_attn_server.plugin``): every name it lists resolves and is
documented, and ``Jobs`` does for plugins what they used to reach into the service for."""

from __future__ import annotations

import inspect

import pytest

import para_attn_server.plugin as face
from para_attn_server.engine.service import JobService
from para_attn_server.plugin import Jobs
from para_attn_server.records import JobState
from para_attn_server.workers.group import JobOutcome
from tests.unit.fakes import FakeGroup, deadline

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(60, method="thread")]


def test_every_name_of_the_face_resolves_lazily_and_is_listed_once() -> None:
    assert len(face.__all__) == len(set(face.__all__))
    assert set(face.__all__) == {*face._LAZY, "hookimpl"}
    for name in face.__all__:
        assert getattr(face, name) is not None, name
    assert set(dir(face)) >= set(face.__all__)
    with pytest.raises(AttributeError, match="has no attribute 'JobService'"):
        _ = face.JobService


def test_every_name_of_the_face_is_documented_in_its_docstring() -> None:
    doc = inspect.getdoc(face) or ""
    undocumented = [name for name in face.__all__ if f"``{name}" not in doc]

    assert undocumented == []


def test_the_markers_are_made_once() -> None:
    from para_attn_server import hookimpl
    from para_attn_server.plugin import builtins, hookspecs, markers

    assert hookimpl is face.hookimpl is builtins.hookimpl is markers.hookimpl
    assert hookspecs.hookspec is markers.hookspec


async def test_find_walks_every_job_newest_first_and_forget_drops_an_ended_one(
    service: JobService, group: FakeGroup
) -> None:
    jobs = Jobs(service)
    first, _ = await jobs.accept({"prompt": "first"})
    second, _ = await jobs.accept({"prompt": "second"})
    (await group.next_run()).finish(JobOutcome("succeeded", output=b"x", file_type="png"))
    await deadline(first.done.wait())

    assert jobs.find() == [second, first]
    assert jobs.find(lambda job: job.inputs["prompt"] == "first") == [first]
    assert jobs.list_jobs(JobState.QUEUED) == ([second], False)
    with pytest.raises(ValueError, match="has not ended"):
        jobs.forget(second)  # queued: forgetting it would lose a job the queue still holds

    jobs.forget(first)

    assert (jobs.get(first.id), jobs.find()) == (None, [second])
    assert jobs.cancel(second.id) is second
    assert await jobs.wait(second, 1) is True
    assert jobs.view(second).state == "cancelled"
