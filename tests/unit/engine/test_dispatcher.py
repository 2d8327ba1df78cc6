"""The dispatcher's choice of group and jobs: a group that holds a job's adapters first, a
job overtaken for that at most once, and batches of jobs with equal batch keys."""

from __future__ import annotations

import time
from typing import Any

import pytest

from para_attn_server.adapters import AdapterStats
from para_attn_server.engine.dispatcher import Batching, Dispatcher
from para_attn_server.engine.queue import JobQueue

WANTS = {"base": [], "x": ["x"], "y": ["y"], "xy": ["x", "y"], "x2": ["x"], "y2": ["y"]}


class Group:
    def __init__(self, index: int, *loaded: str, model: str = "") -> None:
        self.index = index
        self.ready = True
        self.adapters = AdapterStats(loaded=list(loaded))
        self.model = model


def dispatcher(groups: list[Group], *jobs: str, batching: Batching[str] | None = None) -> Dispatcher[str]:
    async def execute(jobs: list[str], group: Any) -> None: ...

    queue: JobQueue[str] = JobQueue()
    for job in jobs:
        queue.append(job)
    wants = lambda job: WANTS.get(job.partition("#")[0], [])  # noqa: E731
    model_of = lambda job: job.partition("@")[2]  # noqa: E731  # "job@model"
    return Dispatcher(groups, queue, execute, wants, batching, model_of)  # type: ignore[arg-type]


def taken(d: Dispatcher[str]) -> tuple[str, int] | None:
    """The one job taken and its group's index."""
    found = d.take()
    if found is None:
        return None
    assert len(found[0]) == 1
    return found[0][0], found[1].index


def test_a_job_goes_to_the_idle_group_that_holds_its_adapters() -> None:
    d = dispatcher([Group(0), Group(1, "y"), Group(2, "x")], "x")
    assert taken(d) == ("x", 2)


def test_the_group_holding_most_of_its_adapters_wins_and_ties_go_to_the_first() -> None:
    assert taken(dispatcher([Group(0, "x"), Group(1, "x", "y")], "xy")) == ("xy", 1)
    assert taken(dispatcher([Group(0, "y"), Group(1, "x")], "xy")) == ("xy", 0)
    assert taken(dispatcher([Group(0), Group(1, "x")], "base")) == ("base", 0)


def test_the_job_behind_goes_first_when_only_it_finds_its_adapters_but_only_once() -> None:
    groups = [Group(0, "y"), Group(1, "x")]
    groups[1].ready = False  # busy elsewhere: only group 0 is idle
    d = dispatcher(groups, "x", "y", "y2")
    assert taken(d) == ("y", 0)  # x's adapter is nowhere idle, y's is on group 0
    # x was overtaken once: it goes next, though y2 would find its adapter too.
    assert taken(d) == ("x", 0)
    assert taken(d) == ("y2", 0)
    assert taken(d) is None


def test_no_overtaking_for_a_job_without_adapters_or_when_nobody_holds_the_next_ones() -> None:
    assert taken(dispatcher([Group(0, "y")], "base", "y")) == ("base", 0)
    assert taken(dispatcher([Group(0)], "x", "y")) == ("x", 0)


def test_nothing_is_taken_without_an_idle_ready_group() -> None:
    group = Group(0)
    group.ready = False
    d = dispatcher([group], "x")
    assert taken(d) is None
    assert list(d.queue) == ["x"]


SIZE = {"s": 1, "m": 2}  # batch key: a job's size, "s#1" and "s#2" are both s


def batches(d: Dispatcher[str]) -> list[list[str]]:
    found = []
    while (taken_now := d.take()) is not None:
        found.append(taken_now[0])
        d._busy.clear()  # the group is free again at once
    return found


def test_jobs_with_the_same_batch_key_go_together_up_to_max_in_queue_order() -> None:
    batching = Batching(max_size=3, key=lambda job: SIZE.get(job.partition("#")[0]))
    d = dispatcher([Group(0)], "s#1", "m#1", "s#2", "base", "s#3", "s#4", "m#2", batching=batching)
    assert batches(d) == [["s#1", "s#2", "s#3"], ["m#1", "m#2"], ["base"], ["s#4"]]


def test_without_batching_or_without_a_key_every_job_runs_alone() -> None:
    key = lambda job: 1  # noqa: E731
    assert batches(dispatcher([Group(0)], "s#1", "s#2", batching=Batching(max_size=1, key=key))) == [["s#1"], ["s#2"]]
    assert batches(dispatcher([Group(0)], "base", "base")) == [["base"], ["base"]]


@pytest.mark.anyio
async def test_a_head_waits_for_its_batch_to_fill_no_longer_than_batch_wait() -> None:
    arrived = {"s#1": 0.0}
    batching = Batching(max_size=2, wait=30.0, key=lambda job: 1, arrived=lambda job: arrived.get(job, 0.0))
    d = dispatcher([Group(0)], "s#1", batching=batching)
    arrived["s#1"] = time.time()
    assert d.take() is None  # alone, arrived just now: it waits for a second
    d.queue.append("s#2")
    found = d.take()
    assert found is not None
    assert found[0] == ["s#1", "s#2"]
    d.queue.append("s#3")
    arrived["s#3"] = 0.0  # waited long enough already: goes alone
    found = d.take()
    assert found is not None
    assert found[0] == ["s#3"]


def test_the_queue_runs_higher_priorities_first_and_fifo_among_equals() -> None:
    priority = {"a": 0, "b": 0, "c": 10, "d": -5, "e": 10}
    jobs = {name: [name] for name in priority}  # the queue knows jobs by identity
    queue: JobQueue[list[str]] = JobQueue(lambda job: priority[job[0]])
    for job in jobs.values():
        queue.append(job)
    assert [job[0] for job in queue] == ["c", "e", "a", "b", "d"]
    assert queue.index(jobs["a"]) == 2
    assert queue.by_priority() == {10: 2, 0: 2, -5: 1}
    queue.remove(jobs["e"])
    assert [queue.popleft()[0] for _ in range(len(queue))] == ["c", "a", "b", "d"]
    with pytest.raises(ValueError, match="not queued"):
        queue.remove(jobs["a"])


def test_each_model_is_a_lane_a_job_without_an_idle_group_holds_up_no_other_model() -> None:
    groups = [Group(0, model="a"), Group(1, model="b")]
    groups[0].ready = False  # model a's only group is busy
    d = dispatcher(groups, "base#1@a", "base#2@b", "base#3@a", "base#4@b")
    assert taken(d) == ("base#2@b", 1)  # behind a's head, yet it starts
    groups[1].ready = False  # it runs that job now
    assert d.take() is None  # a's jobs wait for group 0, b's for group 1
    groups[0].ready = True
    assert taken(d) == ("base#1@a", 0)  # a's order kept
    assert list(d.queue) == ["base#3@a", "base#4@b"]


def test_a_batch_takes_jobs_of_its_own_model_only() -> None:
    groups = [Group(0, model="a"), Group(1, model="b")]
    groups[1].ready = False
    d = dispatcher(groups, "j1@a", "j2@b", "j3@a", batching=Batching(max_size=4, key=lambda job: "same"))
    jobs, group = d.take() or ([], None)
    assert (jobs, group) == (["j1@a", "j3@a"], groups[0])
