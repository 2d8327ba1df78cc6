"""para_attn_client against a real server (the noop predictor, and the tiny Flux
pipeline where an image matters): generate, submit by PUT, events, cancel, list, errors,
retries and the API key, with the sync and the async client."""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import msgspec
import pytest
from PIL import Image

from para_attn_client import (
    API_KEY_ENV,
    AsyncClient,
    Client,
    Conflict,
    Event,
    InputRejected,
    Job,
    JobCancelled,
    JobFailed,
    NotFound,
    Progress,
    QueueFull,
    ServerUnreachable,
    Unauthorized,
)
from para_attn_server.testing import Server
from tests.integration.support import metric, png_size

pytestmark = pytest.mark.timeout(180)

KEY = "client-test-key"
MAX_OUTPUT = 4096  # a job asked for more bytes fails on the ranks
LONG = {"steps": 100_000, "step_seconds": 0.01}  # runs until cancelled


@pytest.fixture(scope="module")
def server(launch) -> Server:
    server: Server = launch(
        "--model", "noop", "--api-key", KEY, "--max-output-bytes", str(MAX_OUTPUT), "--max-queue", "1"
    )  # fmt: skip
    server.http.headers["Authorization"] = f"Bearer {KEY}"  # for the harness's own requests
    return server


@pytest.fixture
def client(server: Server) -> Iterator[Client]:
    with Client(server.url, api_key=KEY) as client:
        yield client


def followed_steps(events: list[Event]) -> list[int]:
    """The steps the events show: a subscriber joins a job at the step it reached (the
    first event, the job), then sees a Progress at every step after it."""
    first = events[0]
    assert isinstance(first, Job)
    return [first.step or 0] + [event.step for event in events if isinstance(event, Progress)]


def shown(job: Job) -> dict[str, object]:
    """The job as the server's JSON shows it (it leaves out empty fields)."""
    return {name: value for name, value in msgspec.to_builtins(job).items() if value is not None}


class Counting(httpx.HTTPTransport):
    """A real transport that counts the requests it sends."""

    def __init__(self) -> None:
        super().__init__()
        self.sent = 0

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.sent += 1
        return super().handle_request(request)


class LosesFirstSubmitAnswer(httpx.HTTPTransport):
    """Sends the first PUT to the server, which queues the job, then drops the answer as a
    broken connection would."""

    def __init__(self) -> None:
        super().__init__()
        self.lost = 0

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = super().handle_request(request)
        if request.method == "PUT" and not self.lost:
            self.lost += 1
            response.read()
            response.close()
            raise httpx.ReadError("connection reset by peer", request=request)
        return response


# ---- generate --------------------------------------------------------------------------------


def test_generate_returns_the_output_and_the_job_and_reports_every_step(server: Server, client: Client) -> None:
    # The job waits behind another until generate follows it, so it cannot pass a step unseen.
    blocker = server.submit(**LONG)
    server.wait_running(blocker)
    events: list[Event] = []
    followed = threading.Event()

    def seen(event: Event) -> None:
        events.append(event)
        followed.set()

    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        generating = pool.submit(client.generate, size=300, steps=5, step_seconds=0.01, on_event=seen)
        assert followed.wait(60), "generate never followed its job"
        server.http.post(f"/v1/jobs/{blocker}/cancel")
        result = generating.result(60)

    assert result.job.state == "succeeded"
    assert result.output == server.output(result.job.id)
    assert len(result.output) == 300
    assert result.content_type == "application/octet-stream"
    assert shown(result.job) == server.wait(result.job.id)
    assert [event for event in events if isinstance(event, Progress)] == [Progress(k, 5) for k in range(1, 6)]
    assert [event.state for event in events if isinstance(event, Job)] == ["queued", "running", "succeeded"]
    assert events[-1] == result.job


def test_a_job_that_fails_raises_job_failed_with_the_job(client: Client) -> None:
    with pytest.raises(JobFailed) as caught:
        client.generate(size=MAX_OUTPUT * 2)
    job = caught.value.job
    assert type(caught.value) is JobFailed
    assert job.state == "failed"
    assert job.error is not None
    assert "output too large" in job.error
    assert str(caught.value) == f"job {job.id} failed: {job.error}"


def test_bad_inputs_raise_input_rejected_naming_the_field(client: Client) -> None:
    cases = {"steps": {"steps": -1}, "size": {"size": "large"}}
    for field, inputs in cases.items():
        with pytest.raises(InputRejected) as caught:
            client.generate(inputs)
        assert (caught.value.status, caught.value.field) == (400, field)
        assert caught.value.reason.startswith("Expected `int`")
    with pytest.raises(InputRejected, match="colour") as caught:
        client.submit(colour="red")
    assert caught.value.field == "colour"
    with pytest.raises(InputRejected) as caught:
        client.submit(job_id="not-a-uuid")
    assert caught.value.field == "job_id"


# ---- submit by PUT: a retry never runs a job twice --------------------------------------------


def test_a_submit_whose_answer_was_lost_is_retried_and_runs_the_job_once(server: Server) -> None:
    transport = LosesFirstSubmitAnswer()
    job_id = str(uuid.uuid4())
    before = metric(server, "para_attn_jobs_submitted_total")
    with Client(server.url, api_key=KEY, transport=transport) as client:
        job = client.submit(size=10, job_id=job_id)
    assert transport.lost == 1
    assert job.id == job_id
    assert metric(server, "para_attn_jobs_submitted_total") == before + 1
    assert server.wait(job_id)["state"] == "succeeded"


def test_the_same_id_returns_the_same_job_and_other_inputs_conflict(client: Client, server: Server) -> None:
    first = client.submit(size=10, wait=30)
    assert first.done
    assert client.submit({"size": 10}, job_id=first.id) == first
    with pytest.raises(Conflict, match="different inputs"):
        client.submit(size=11, job_id=first.id)


# ---- events, get, cancel ---------------------------------------------------------------------


def test_events_follow_a_job_from_its_state_to_its_end(client: Client) -> None:
    job = client.submit(steps=3, step_seconds=0.01)
    events = list(client.events(job.id))
    assert isinstance(events[0], Job)
    assert events[0].id == job.id
    steps = followed_steps(events)
    assert steps == list(range(steps[0], 4))
    last = events[-1]
    assert isinstance(last, Job)
    assert (last.state, last.step, last.total, last.total_steps) == ("succeeded", 3, 3, 3)
    assert client.get(job.id) == last
    assert list(client.events(job.id)) == [last]  # an ended job: its state, and the end
    with pytest.raises(NotFound):
        list(client.events(str(uuid.uuid4())))


def test_cancelling_a_job_makes_generate_raise_job_cancelled(server: Server, client: Client) -> None:
    job_id = str(uuid.uuid4())
    stepping = threading.Event()

    def seen(event: Event) -> None:
        if isinstance(event, Progress):
            stepping.set()

    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        running = pool.submit(client.generate, LONG, job_id=job_id, on_event=seen)
        assert stepping.wait(60), "the job never reported a step"
        with Client(server.url, api_key=KEY) as other:
            assert other.cancel(job_id).id == job_id
        with pytest.raises(JobCancelled) as caught:
            running.result(60)
    assert caught.value.job.state == "cancelled"
    with pytest.raises(Conflict, match="already ended"):
        client.cancel(job_id)
    with pytest.raises(NotFound):
        client.cancel(str(uuid.uuid4()))


# ---- list ------------------------------------------------------------------------------------


def test_list_pages_through_jobs_newest_first(client: Client) -> None:
    made = [client.generate(size=1).job for _ in range(3)]
    with pytest.raises(JobFailed) as caught:
        client.generate(size=MAX_OUTPUT * 2)
    failed = caught.value.job

    page = client.list(limit=2)
    assert [job.id for job in page.data] == [failed.id, made[2].id]
    assert (page.has_more, page.last_id) == (True, made[2].id)
    page = client.list(limit=2, after=page.last_id)
    assert [job.id for job in page.data] == [made[1].id, made[0].id]
    assert page.data[0] == client.get(made[1].id)
    assert client.list(state="failed", limit=1).data == [client.get(failed.id)]
    assert client.list(state="succeeded", after=made[1].id).data[0] == client.get(made[0].id)
    for name, params in {"after": {"after": str(uuid.uuid4())}, "state": {"state": "done"}}.items():
        with pytest.raises(InputRejected) as rejected:
            client.list(**params)  # type: ignore[arg-type]
        assert rejected.value.field == name


# ---- API key, retries ------------------------------------------------------------------------


def test_the_api_key_comes_from_the_argument_or_else_the_environment(
    server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(API_KEY_ENV, raising=False)
    with Client(server.url) as client, pytest.raises(Unauthorized):
        client.list()
    with Client(server.url, api_key="wrong") as client, pytest.raises(Unauthorized):
        client.list()
    monkeypatch.setenv(API_KEY_ENV, KEY)
    with Client(server.url) as client:
        assert client.list(limit=1).data
    monkeypatch.setenv(API_KEY_ENV, "wrong")
    with Client(server.url, api_key=KEY) as client:  # the argument wins
        assert client.list(limit=1).data


def test_a_full_queue_is_tried_again_after_retry_after_then_raised(server: Server) -> None:
    blocker = server.submit(**LONG)
    try:
        server.wait_running(blocker)
        waiting = server.submit(size=1)  # the queue's one place
        transport = Counting()
        with (
            Client(server.url, api_key=KEY, retries=1, transport=transport) as client,
            pytest.raises(QueueFull) as caught,
        ):
            client.submit(size=1)
        assert transport.sent == 2
        assert caught.value.retry_after >= 1
        assert caught.value.status == 429
    finally:
        server.http.post(f"/v1/jobs/{blocker}/cancel")
    assert server.wait(blocker)["state"] == "cancelled"
    assert server.wait(waiting)["state"] == "succeeded"


def test_a_server_that_does_not_answer_is_tried_again_then_server_unreachable(unused_port: int) -> None:
    transport = Counting()
    client = Client(f"http://127.0.0.1:{unused_port}", retries=2, transport=transport)
    with client, pytest.raises(ServerUnreachable, match="ConnectError") as caught:
        client.get(str(uuid.uuid4()))
    assert transport.sent == 3
    assert isinstance(caught.value.__cause__, httpx.ConnectError)


@pytest.fixture
def unused_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


# ---- the async client ------------------------------------------------------------------------


def test_the_async_client_generates_lists_and_gets(server: Server) -> None:
    async def run() -> None:
        async with AsyncClient(server.url, api_key=KEY) as client:
            events: list[Event] = []
            result = await client.generate({"size": 20, "steps": 2}, on_event=events.append)
            assert result.output == server.output(result.job.id)
            steps = followed_steps(events)
            assert steps == list(range(steps[0], 3))
            assert (await client.list(limit=1)).data == [result.job]
            assert await client.get(result.job.id) == result.job
            assert await client.output(result.job.id) == (result.output, "application/octet-stream")
            with pytest.raises(InputRejected) as caught:
                await client.submit(steps=-1)
            assert caught.value.field == "steps"

    asyncio.run(run())


def test_cancelling_the_task_of_an_async_generate_cancels_its_job(server: Server) -> None:
    job_id = str(uuid.uuid4())

    async def run() -> None:
        stepping = asyncio.Event()

        def seen(event: Event) -> None:
            if isinstance(event, Progress):
                stepping.set()

        async with AsyncClient(server.url, api_key=KEY) as client:
            task = asyncio.create_task(client.generate(LONG, job_id=job_id, on_event=seen))
            await asyncio.wait_for(stepping.wait(), 60)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task

    asyncio.run(run())
    assert server.wait(job_id)["state"] == "cancelled"


# ---- a real image ----------------------------------------------------------------------------


def test_generate_with_the_tiny_model_returns_its_png(tiny_server: Server) -> None:
    # A longer job holds the group while generate's event stream opens: a 2-step job alone
    # could end before its stream is there to see the steps (it did once on a clean clone).
    longer = tiny_server.submit(prompt="ahead in the queue", num_inference_steps=40)
    with Client(tiny_server.url) as client:
        steps: list[int] = []
        result = client.generate(
            prompt="a cat in a hat", seed=7, num_inference_steps=2,
            on_event=lambda event: steps.append(event.step) if isinstance(event, Progress) else None,
        )  # fmt: skip
    assert result.content_type == "image/png"
    assert png_size(result.output) == (32, 32)
    assert result.output == tiny_server.output(result.job.id)
    assert steps == [1, 2]
    assert (tiny_server.wait(longer)["finished_at"] or 0) <= (result.job.started_at or 0)  # it did run first


def test_pictures_go_as_paths_bytes_or_pil_images_and_job_ids_chain_outputs(
    tiny_server: Server, tmp_path: Path
) -> None:
    source = tmp_path / "cat.png"
    Image.new("RGB", (48, 32), (220, 40, 40)).save(source)
    small = {"num_inference_steps": 2, "width": 48, "height": 32, "strength": 0.5}
    with Client(tiny_server.url) as client:
        from_path = client.generate(prompt="a cat", image=source, **small)
        from_bytes = client.generate(prompt="a cat", image=source.read_bytes(), **small)
        from_pil = client.generate(prompt="a cat", image=Image.open(source), **small)
        chained = client.generate(prompt="a cat in a hat", image=f"job:{from_path.job.id}", **small)
    # The same pixels, however they were given: the same image (seed 0).
    assert from_path.output == from_bytes.output == from_pil.output
    assert png_size(chained.output) == (48, 32)
    assert chained.output != from_path.output

    async def from_async() -> bytes:
        async with AsyncClient(tiny_server.url) as client:
            return (await client.generate(prompt="a cat", image=source, **small)).output

    assert asyncio.run(from_async()) == from_path.output
