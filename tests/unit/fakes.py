"""Test doubles for the unit suite: small predictors named by what they do, and a fake
worker group that the tests drive by hand (no processes, no sockets).

The module is also a plugin (``register_predictors`` below), so tests can load it by name.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, TypeVar

import msgspec

from para_attn_server import InputError, Output, Predictor, RankContext, hookimpl
from para_attn_server.adapters import AdapterStats
from para_attn_server.engine.registry import Job
from para_attn_server.engine.service import JobService
from para_attn_server.errors import SetupError
from para_attn_server.lorafiles import AdapterFit
from para_attn_server.settings import GroupSettings
from para_attn_server.views import GroupStatus, RankRow
from para_attn_server.workers.exactreader import STAGING, ExactReader
from para_attn_server.workers.outcome import BatchMember, JobOutcome

# ---- predictors -------------------------------------------------------------------------


class EchoPredictor(Predictor):
    """New style: returns ``prompt`` repeated ``repeat`` times; rejects the prompt "forbidden"."""

    def setup(self, context: RankContext) -> None:
        self.context = context

    def validate(self, inputs: dict[str, Any]) -> None:
        if inputs["prompt"] == "forbidden":
            raise InputError("this prompt is not allowed", "prompt")

    def predict(
        self,
        prompt: Annotated[str, msgspec.Meta(min_length=1, max_length=100)],
        repeat: Annotated[int, msgspec.Meta(ge=1, le=50)] = 1,
        scale: float = 3.5,
        tags: list[str] = [],  # noqa: B006 - the schema must copy a mutable default per request
    ) -> Output | None:
        return Output((prompt * repeat).encode(), "txt")


class LegacyPredictor:
    """Written for the original server: no base class, writes ``output_path`` itself or
    returns ``(base64, file_type)``."""

    def setup(self) -> None:
        self.pipe = None

    def predict(self, prompt: str, seed: int = 0, output_path: str | None = None) -> tuple[str, str] | None:
        raise NotImplementedError  # the tests that use it never run predict


class KwargsPredictor:
    """Written for the original server with ``predict(**kwargs)``: takes any field."""

    def setup(self) -> None:
        self.pipe = None

    def predict(self, prompt: str = "", **kwargs: Any) -> tuple[str, str]:
        raise NotImplementedError


class NotAPredictor:
    def predict(self) -> None:  # no setup()
        pass


@hookimpl
def register_predictors(register: Callable[[str, type[Any]], None]) -> None:
    register("echo", EchoPredictor)
    register("legacy", LegacyPredictor)


# ---- worker group -----------------------------------------------------------------------

MakeService = Callable[..., Awaitable[JobService]]  # the make_service fixture

T = TypeVar("T")
# Every wait on the code under test has this deadline, so a regression fails the test with a
# traceback instead of hanging the run. It bounds a wait; no test asserts on how long one took.
DEADLINE = 10.0


async def deadline(awaitable: Awaitable[T]) -> T:
    async with asyncio.timeout(DEADLINE):
        return await awaitable


@dataclass
class FakeRun:
    """One call of ``FakeGroup.run``; the test ends it with ``finish``."""

    job_id: str
    inputs: dict[str, Any]
    timeout: float | None
    on_progress: Callable[[int, int | None], None]
    outcome: asyncio.Future[JobOutcome]
    on_preview: Callable[[int, bytes], None] | None = None
    media: dict[str, bytes] | None = None
    batch: Sequence[BatchMember] = ()  # the jobs beside this one in its pipeline call

    def finish(self, outcome: JobOutcome) -> None:
        self.outcome.set_result(outcome)

    def succeed(self, output: bytes = b"output", file_type: str = "png") -> None:
        self.finish(JobOutcome("succeeded", output=output, file_type=file_type))


class FakeGroup:
    """A worker group as the engine needs one (``engine.contract.Group``), driven by the test.

    - ``runs`` receives a ``FakeRun`` for every job handed to the group, in order
      (``await next_run()`` takes the next one);
    - ``crash(reason)`` is a fault (a rank died): the group stops being ready;
    - ``fail_starts`` lists reasons for the next ``start()`` calls to fail with;
    - ``start_gate``, when set, holds every ``start()`` until the test sets it;
    - ``start_called`` is set whenever ``start()`` is entered.
    """

    def __init__(
        self,
        *,
        cancel_grace: float = 5.0,
        stop_on_cancel: bool = True,
        index: int = 0,
        host: str = "fake-host",
        model: str = "",
    ) -> None:
        self.index = index
        self.host = host
        self.model = model
        self.world_size = 2
        self.settings = GroupSettings(cancel_grace=cancel_grace)
        self.stop_on_cancel = stop_on_cancel
        self.ready = False
        self.restarts = 0
        self.last_fault: str | None = None
        self.starts = 0
        self.stops = 0
        self.fail_starts: list[str] = []
        self.start_gate: asyncio.Event | None = None
        self.start_called = asyncio.Event()
        self.runs: asyncio.Queue[FakeRun] = asyncio.Queue()
        self.current: FakeRun | None = None
        self.cancelled: list[str] = []
        self._fault: asyncio.Future[str] | None = None
        self.adapter_fit: AdapterFit | None = None
        self.adapters = AdapterStats()  # a test sets ``loaded`` to say what its cache holds

    @property
    def fault(self) -> asyncio.Future[str]:
        assert self._fault is not None, "group not started"
        return self._fault

    async def start(self) -> None:
        self.starts += 1
        self.ready = False
        self.start_called.set()
        if self.start_gate is not None:
            await self.start_gate.wait()
        if self.fail_starts:
            raise SetupError(self.fail_starts.pop(0))
        self._fault = asyncio.get_running_loop().create_future()
        self.ready = True

    async def stop(self) -> None:
        self.stops += 1
        self.ready = False

    async def run(
        self,
        job_id: str,
        inputs: dict[str, Any],
        timeout: float | None,
        on_progress: Callable[[int, int | None], None],
        on_preview: Callable[[int, bytes], None] | None = None,
        media: dict[str, bytes] | None = None,
        batch: Sequence[BatchMember] = (),
    ) -> JobOutcome:
        assert self.ready, "run() on a group that is not ready"
        outcome = asyncio.get_running_loop().create_future()
        run = FakeRun(job_id, inputs, timeout, on_progress, outcome, on_preview, media, batch)
        self.current = run
        self.runs.put_nowait(run)
        try:
            return await run.outcome
        finally:
            self.current = None

    async def next_run(self) -> FakeRun:
        return await deadline(self.runs.get())

    def cancel(self, job_id: str) -> bool:
        self.cancelled.append(job_id)
        run = self.current
        if run is None or run.job_id != job_id:
            return False
        if self.stop_on_cancel and not run.outcome.done():
            run.finish(JobOutcome("cancelled"))
        return True

    def crash(self, reason: str = "rank 1 (pid 4242) killed by SIGKILL") -> None:
        """A fault, as the real group reports it: the running job fails with the reason."""
        self.ready = False
        self.last_fault = reason
        self.fault.set_result(reason)
        if self.current is not None and not self.current.outcome.done():
            self.current.finish(JobOutcome("failed", error=reason))

    def rank_rows(self) -> list[RankRow]:
        state = "ready" if self.ready else "starting"
        return [RankRow(rank, self.index, None, None, state, None) for rank in range(self.world_size)]

    def status(self) -> GroupStatus:
        busy = self.current is not None
        return GroupStatus(
            self.index, self.ready, busy, self.restarts, self.last_fault, self.rank_rows(), model=self.model
        )


def watch_subscriptions(service: JobService, monkeypatch: Any) -> asyncio.Event:
    """An event set once a client's event stream holds its subscription: a test can then
    make the job move knowing the stream sees every step."""
    subscribed = asyncio.Event()
    subscribe = service.subscribe

    @contextlib.asynccontextmanager
    async def observed(job: Job) -> AsyncIterator[Any]:
        async with subscribe(job) as queue:
            subscribed.set()
            yield queue

    monkeypatch.setattr(service, "subscribe", observed)
    return subscribed


async def exact_reader(sock: socket.socket, staging: int = STAGING) -> tuple[ExactReader, asyncio.Transport]:
    """The server's reader of rank connections on ``sock``, on the running event loop."""
    connected: asyncio.Future[ExactReader] = asyncio.get_running_loop().create_future()
    transport, _ = await asyncio.get_running_loop().connect_accepted_socket(
        lambda: ExactReader(lambda reader, _: connected.set_result(reader), staging), sock=sock
    )
    return await connected, transport
