"""Batches below the engine: a ``WorkerGroup`` runs several jobs as one call on two real
``RankWorker``s (threads of this process, each with its own control connection; no torch
collectives: each rank decides on its own), and the routing and outcome policy of
``RunningJob`` on their own."""

from __future__ import annotations

import asyncio
import io
import pickle
import queue
import threading
import time
from typing import Any

import numpy as np
import pytest
from PIL import Image as PILImage

from para_attn_server import Image, Output, Predictor, current_job
from para_attn_server.media import REF_PREFIX, digest
from para_attn_server.protocol import JobEnded, SetupDone
from para_attn_server.rank.decisions import DecisionChannel
from para_attn_server.rank.link import ControlLink
from para_attn_server.rank.worker import RankWorker
from para_attn_server.settings import GroupSettings
from para_attn_server.workers.executor import Executor, RankSpec
from para_attn_server.workers.group import WorkerGroup
from para_attn_server.workers.outcome import BatchMember, JobOutcome, RunningJob
from tests.unit.fakes import DEADLINE, deadline

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(60, method="thread")]

STEPS = 3


class Batcher(Predictor):
    """Outputs ``prompt:seed:WxH`` (the picture's size, or 0x0); ``predict_batch`` previews
    each job with a picture whose every pixel is the job's index. Prompts that steer it:
    ``none`` (no output for that job), ``boom`` (raises on every rank), ``slow`` (steps
    until cancelled)."""

    def predict(self, prompt: str, seed: int = 0, image: Image | None = None) -> Output | None:
        return self.predict_batch([{"prompt": prompt, "seed": seed, "image": image}])[0]

    def batch_key(self, inputs: dict[str, Any]) -> str:
        return "all"

    def predict_batch(self, batch: list[dict[str, Any]]) -> list[Output | None]:
        job = current_job()
        slow = any(one["prompt"] == "slow" for one in batch)
        for step in range(1, 1000 if slow else STEPS + 1):
            job.step(step, None if slow else STEPS)
            if slow:
                time.sleep(0.01)
        if len(batch) > 1:
            for index in range(len(batch)):
                job.preview(np.full((8, 8, 3), index * 100, np.uint8), index=index)
        if any(one["prompt"] == "boom" for one in batch):
            raise RuntimeError("boom")
        if job.rank:
            return [None] * len(batch)
        return [None if one["prompt"] == "none" else Output(describe(one).encode(), "txt") for one in batch]


def describe(job: dict[str, Any]) -> str:
    image = job.get("image")
    size = f"{image.size[0]}x{image.size[1]}" if image is not None else "0x0"
    return f"{job['prompt']}:{job['seed']}:{size}"


class ThreadLink(ControlLink):
    """A rank's link that ends its thread, not the process, when the server goes."""

    def _server_gone(self) -> None:
        if not self._stop.is_set():
            raise SystemExit(3)


class ThreadDecisions(DecisionChannel):
    """Rank 0's decision at each step handed to the other ranks' threads, as the rank
    processes hand it over their sockets: the ranks stop at the same step."""

    def __init__(self, rank: int, handoff: list[queue.Queue[bool]]) -> None:
        super().__init__()
        self.rank, self.handoff = rank, handoff

    def decide(self, stop: bool) -> bool:
        if self.rank:
            return self.handoff[self.rank - 1].get(timeout=DEADLINE)
        for other in self.handoff:
            other.put(stop)
        return stop


class ThreadRanks(Executor):
    """Each rank a thread running the real rank code after setup (no process group)."""

    def __init__(self, num_ranks: int, options: Any = None) -> None:
        super().__init__(num_ranks, options)
        self.threads: list[threading.Thread] = []
        self._exited: asyncio.Future[str] | None = None

    async def launch(self, spec: RankSpec) -> None:
        self._exited = asyncio.get_running_loop().create_future()
        handoff: list[queue.Queue[bool]] = [queue.Queue() for _ in range(self.num_ranks - 1)]
        self.threads = [
            threading.Thread(target=self._rank, args=(spec, rank, handoff), daemon=True)
            for rank in range(self.num_ranks)
        ]
        for thread in self.threads:
            thread.start()

    @staticmethod
    def _rank(spec: RankSpec, rank: int, handoff: list[queue.Queue[bool]]) -> None:
        link = ThreadLink(spec, rank)
        try:
            worker = RankWorker(spec, rank, rank, link)
            worker.decisions = ThreadDecisions(rank, handoff)
            link.send(SetupDone(rank))
            worker.serve()
        finally:
            link.close()

    async def wait_exit(self) -> str:
        assert self._exited is not None
        return await self._exited  # ranks that are threads exit only when stopped

    async def wait_stopped(self, timeout: float) -> bool:
        await asyncio.to_thread(self._join, timeout)
        return not any(thread.is_alive() for thread in self.threads)

    async def terminate(self, grace: float) -> None:
        await asyncio.to_thread(self._join, grace)

    def _join(self, timeout: float) -> None:
        for thread in self.threads:
            thread.join(timeout)


@pytest.fixture
async def group() -> Any:
    spec = RankSpec(
        world_size=2,
        control_host="127.0.0.1",
        control_port=0,
        token="",
        generation=0,
        predictor_pickle=pickle.dumps(Batcher()),
    )
    group = WorkerGroup(0, ThreadRanks(2), GroupSettings(cancel_grace=5.0, error_grace=2.0), spec)
    await group.open()
    await deadline(group.start())
    try:
        yield group
    finally:
        await group.stop()


class Member:
    """A job of a batch as the engine would hand it over, recording what reaches it."""

    def __init__(self, job_id: str, **inputs: Any) -> None:
        self.job_id, self.inputs = job_id, {"seed": 0, **inputs}
        self.steps: list[tuple[int, int | None]] = []
        self.previews: list[tuple[int, bytes]] = []
        self.stepped = asyncio.Event()

    def member(self) -> BatchMember:
        return BatchMember(self.job_id, self.inputs, self.on_progress, self.on_preview)

    def on_progress(self, step: int, total: int | None) -> None:
        self.steps.append((step, total))
        self.stepped.set()

    def on_preview(self, step: int, jpeg: bytes) -> None:
        self.previews.append((step, jpeg))


async def run_batch(group: WorkerGroup, jobs: list[Member], **extra: Any) -> JobOutcome:
    leader, *others = jobs
    return await deadline(
        group.run(
            leader.job_id,
            leader.inputs,
            None,
            leader.on_progress,
            leader.on_preview,
            batch=[member.member() for member in others],
            **extra,
        )
    )


def png(width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    PILImage.new("RGB", (width, height), (10, 20, 30)).save(buffer, format="PNG")
    return buffer.getvalue()


def pixel(jpeg: bytes) -> int:
    return int(np.asarray(PILImage.open(io.BytesIO(jpeg))).mean().round())


async def test_a_batch_runs_as_one_call_and_each_job_gets_its_own_output_progress_and_previews(
    group: WorkerGroup,
) -> None:
    picture = png(24, 16)
    jobs = [
        Member("lead", prompt="a", seed=1),
        Member("second", prompt="b", seed=2, image=REF_PREFIX + digest(picture)),  # its picture in media
        Member("third", prompt="c", seed=3),
    ]

    outcome = await run_batch(group, jobs, media={digest(picture): picture})

    assert (outcome.status, outcome.output, outcome.file_type) == ("succeeded", b"a:1:0x0", "txt")
    assert {job_id: (member.status, member.output) for job_id, member in outcome.members.items()} == {
        "second": ("succeeded", b"b:2:24x16"),
        "third": ("succeeded", b"c:3:0x0"),
    }
    for job in jobs:  # one step boundary for the batch: every job saw each step
        assert job.steps[-1] == (STEPS, STEPS)
        assert [step for step, _ in job.steps] == sorted({step for step, _ in job.steps})
        assert [(step, pixel(jpeg)) for step, jpeg in job.previews] == [(STEPS, 100 * jobs.index(job))]
    assert group.ready


async def test_a_job_without_output_fails_alone(group: WorkerGroup) -> None:
    jobs = [Member("lead", prompt="a"), Member("empty", prompt="none"), Member("last", prompt="c")]

    outcome = await run_batch(group, jobs)

    assert outcome.status == "succeeded"
    assert outcome.members["empty"] == JobOutcome("failed", error="predict_batch returned no output on rank 0")
    assert outcome.members["last"].output == b"c:0:0x0"


async def test_a_leader_without_output_fails_and_the_others_keep_theirs(group: WorkerGroup) -> None:
    outcome = await run_batch(group, [Member("lead", prompt="none"), Member("other", prompt="b")])

    assert outcome == JobOutcome(
        "failed",
        error="predict_batch returned no output on rank 0",
        members={"other": JobOutcome("succeeded", output=b"b:0:0x0", file_type="txt")},
    )
    assert group.ready  # every rank left the job: no restart


async def test_a_failure_fails_every_job_of_the_batch(group: WorkerGroup) -> None:
    outcome = await run_batch(group, [Member("lead", prompt="a"), Member("bad", prompt="boom")])

    assert outcome.status == "failed"
    assert outcome.error == "rank 0: RuntimeError: boom"
    assert outcome.members == {"bad": JobOutcome("failed", error="rank 0: RuntimeError: boom")}
    assert group.ready


async def test_a_cancel_of_the_leader_stops_the_whole_batch(group: WorkerGroup) -> None:
    jobs = [Member("lead", prompt="slow"), Member("other", prompt="b")]
    task = asyncio.create_task(run_batch(group, jobs))
    await deadline(jobs[1].stepped.wait())  # running: the member hears the batch's steps

    assert not group.cancel("other")  # a batch is cancelled through its leader
    assert group.cancel("lead")
    outcome = await deadline(task)

    assert outcome.status == "cancelled"
    assert outcome.members == {"other": JobOutcome("cancelled")}


async def test_a_lone_job_is_as_before(group: WorkerGroup) -> None:
    job = Member("alone", prompt="a", seed=5)

    outcome = await run_batch(group, [job])

    assert outcome == JobOutcome("succeeded", output=b"a:5:0x0", file_type="txt")
    assert job.previews == []  # the batcher previews batches only
    assert job.steps[-1] == (STEPS, STEPS)


# ---- RunningJob on its own ------------------------------------------------------------------


def running() -> tuple[RunningJob, Member, Member]:
    """A batch of two as the group tracks it (on the running event loop)."""
    lead, other = Member("lead", prompt="a"), Member("other", prompt="b")
    return RunningJob("lead", lead.on_progress, lead.on_preview, [other.member()]), lead, other


async def test_progress_fans_out_and_previews_go_to_the_job_they_show() -> None:
    job, lead, other = running()

    job.progress("lead", 1, 4)
    job.progress("earlier-job", 2, 4)  # a late report of another job
    job.preview("other", 1, b"jpeg-of-other")
    job.preview("lead", 1, b"jpeg-of-lead")
    job.preview("stranger", 1, b"?")

    assert lead.steps == other.steps == [(1, 4)]
    assert lead.previews == [(1, b"jpeg-of-lead")]
    assert other.previews == [(1, b"jpeg-of-other")]


async def test_rank_0_reports_the_members_and_the_leaders_end_decides() -> None:
    job, _, _ = running()

    assert job.report(JobEnded("other", 0, "succeeded", output=b"b", file_type="txt"), 2)
    assert job.report(JobEnded("other", 1, "succeeded"), 2)  # taken, but only rank 0's counts
    assert not job.report(JobEnded("stranger", 0, "succeeded"), 2)
    assert not job.decided.done()
    assert job.ended == {}
    assert job.report(JobEnded("lead", 0, "succeeded", output=b"a", file_type="txt"), 2)

    assert job.decided.done()
    assert not job.all_ended.done()
    assert job.member_ended["other"].output == b"b"
    assert job.with_members(JobOutcome("succeeded")).members == {
        "other": JobOutcome("succeeded", output=b"b", file_type="txt")
    }


@pytest.mark.parametrize(
    ("outcome", "reported", "expected"),
    [
        pytest.param(JobOutcome("cancelled"), True, JobOutcome("cancelled"), id="cancelled: all are"),
        pytest.param(
            JobOutcome("failed", error="job timed out after 1 s"),
            False,
            JobOutcome("failed", error="job timed out after 1 s"),
            id="a timeout or fault fails all",
        ),
        pytest.param(
            JobOutcome("succeeded"),
            True,
            JobOutcome("failed", error="rank 0 did not report this job of the batch"),
            id="no report of a member",
        ),
        pytest.param(
            JobOutcome("failed", error="rank 1: boom"), True, JobOutcome("failed", error="rank 1: boom"), id="failed"
        ),
    ],
)
async def test_members_share_the_batchs_end_unless_rank_0_reported_theirs(
    outcome: JobOutcome, reported: bool, expected: JobOutcome
) -> None:
    job, _, _ = running()
    if reported and outcome.status == "cancelled":  # a report that came before the cancel won
        job.report(JobEnded("other", 0, "succeeded", output=b"b", file_type="txt"), 2)

    assert job.with_members(outcome, reported=reported).members == {"other": expected}
