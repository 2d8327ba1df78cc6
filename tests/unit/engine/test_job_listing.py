"""Listing jobs newest first with a cursor: JobService.list_jobs, its order kept across
expiry, and GET /v1/jobs over a real JobService and a fake worker group."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from para_attn_server.engine.order import CreationOrder
from para_attn_server.engine.registry import Job
from para_attn_server.engine.service import JobService
from para_attn_server.errors import InputError
from para_attn_server.http import create_app
from para_attn_server.records import JobState
from para_attn_server.workers.outcome import JobOutcome
from tests.unit.fakes import FakeGroup, deadline

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.timeout(60, method="thread"),  # see test_jobs.py
]


def cancelled_jobs(service: JobService, count: int) -> list[Job]:
    """``count`` jobs, oldest first, each cancelled while queued (the queue never fills)."""
    jobs = []
    for index in range(count):
        job, _ = service.submit({"prompt": f"job {index}"})
        service.cancel(job.id)
        jobs.append(job)
    return jobs


def ids(jobs: list[Job]) -> list[str]:
    return [job.id for job in jobs]


# ---- CreationOrder ---------------------------------------------------------------------------


def test_creation_order_walks_newest_first_from_a_cursor() -> None:
    order = CreationOrder()
    for job_id in "abcde":
        order.add(job_id)
    assert list(order.older_than(None)) == list("edcba")
    assert list(order.older_than("c")) == list("ba")
    assert list(order.older_than("a")) == []


def test_creation_order_refuses_an_unknown_cursor_at_once() -> None:
    order = CreationOrder()
    order.add("a")
    with pytest.raises(KeyError):
        order.older_than("zz")  # not only once iterated


def test_creation_order_keeps_its_cursors_after_dropping_ids() -> None:
    order = CreationOrder()
    for job_id in "abcdef":
        order.add(job_id)
    for job_id in "ac":
        order.remove(job_id)
    assert "a" not in order
    assert "c" not in order
    assert len(order) == 4
    assert list(order.older_than("e")) == ["d", "b"]
    order.add("g")
    assert list(order.older_than("g")) == list("fedb")
    with pytest.raises(KeyError):
        order.older_than("c")


# ---- JobService.list_jobs --------------------------------------------------------------------


async def test_pages_walk_every_job_once_newest_first(service: JobService) -> None:
    jobs = cancelled_jobs(service, 7)
    seen: list[Job] = []
    after = None
    pages = 0
    while True:
        page, has_more = service.list_jobs(limit=3, after=after)
        pages += 1
        seen += page
        if not has_more:
            break
        after = page[-1].id
    assert ids(seen) == ids(jobs[::-1])
    assert pages == 3


async def test_a_page_that_ends_exactly_at_the_oldest_job_says_no_more(service: JobService) -> None:
    jobs = cancelled_jobs(service, 4)
    page, has_more = service.list_jobs(limit=4)
    assert (ids(page), has_more) == (ids(jobs[::-1]), False)
    page, has_more = service.list_jobs(limit=2, after=jobs[2].id)
    assert (ids(page), has_more) == (ids([jobs[1], jobs[0]]), False)


async def test_state_filter_lists_only_that_state_and_pages_within_it(service: JobService, group: FakeGroup) -> None:
    first, _ = service.submit({"prompt": "runs and succeeds"})
    run = await group.next_run()
    middle = cancelled_jobs(service, 3)
    running, _ = service.submit({"prompt": "runs"})
    run.finish(JobOutcome("succeeded", output=b"x", file_type="txt"))
    await deadline(first.done.wait())
    await group.next_run()  # ``running`` is now the group's
    queued, _ = service.submit({"prompt": "waits"})

    assert service.list_jobs(JobState.SUCCEEDED) == ([first], False)
    assert service.list_jobs(JobState.RUNNING) == ([running], False)
    assert service.list_jobs(JobState.QUEUED) == ([queued], False)
    assert service.list_jobs(JobState.FAILED) == ([], False)
    page, has_more = service.list_jobs(JobState.CANCELLED, limit=2)
    assert (ids(page), has_more) == (ids(middle[:0:-1]), True)
    # The cursor may be a job of another state: the page starts after it all the same.
    assert service.list_jobs(JobState.CANCELLED, after=running.id) == (middle[::-1], False)


async def test_an_unknown_cursor_is_an_input_error_on_after_that_names_no_id(service: JobService) -> None:
    cancelled_jobs(service, 2)
    with pytest.raises(InputError) as caught:
        service.list_jobs(after="3f1c55a6-0000-4000-8000-000000000000")
    assert caught.value.field == "after"
    assert "3f1c55a6" not in str(caught.value)


async def test_expired_jobs_leave_the_list_and_their_cursors_with_them(service: JobService) -> None:
    jobs = cancelled_jobs(service, 5)
    for ended_at, job in enumerate(jobs):
        job.record = job.record.evolve(finished_at=float(ended_at))  # the first two end long before the rest
    service.expire(now=service.settings.result_ttl + 1.5)
    assert service.list_jobs() == ([jobs[4], jobs[3], jobs[2]], False)
    assert service.list_jobs(after=jobs[3].id) == ([jobs[2]], False)
    with pytest.raises(InputError):
        service.list_jobs(after=jobs[1].id)
    newest, _ = service.submit({"prompt": "after the expiry"})
    assert service.list_jobs(limit=2) == ([newest, jobs[4]], True)


# ---- GET /v1/jobs ----------------------------------------------------------------------------


@pytest.fixture
async def client(service: JobService) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=create_app(service))
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        yield client


async def list_jobs(client: httpx.AsyncClient, **params: Any) -> httpx.Response:
    return await client.get("/v1/jobs", params=params)


async def test_get_jobs_answers_a_page_of_job_views_and_the_cursor(
    service: JobService, client: httpx.AsyncClient
) -> None:
    jobs = cancelled_jobs(service, 3)
    response = await list_jobs(client, limit=2)
    assert response.status_code == 200
    body = response.json()
    assert [view["id"] for view in body["data"]] == ids(jobs[:0:-1])
    assert body["data"][0] == (await client.get(f"/v1/jobs/{jobs[2].id}")).json()
    assert (body["has_more"], body["last_id"]) == (True, jobs[1].id)

    body = (await list_jobs(client, limit=2, after=body["last_id"])).json()
    assert body == {
        "data": [(await client.get(f"/v1/jobs/{jobs[0].id}")).json()],
        "has_more": False,
        "last_id": jobs[0].id,
    }


async def test_get_jobs_defaults_to_20_and_an_empty_page_has_no_cursor(
    service: JobService, client: httpx.AsyncClient
) -> None:
    assert (await list_jobs(client)).json() == {"data": [], "has_more": False, "last_id": None}
    cancelled_jobs(service, 21)
    body = (await list_jobs(client)).json()
    assert (len(body["data"]), body["has_more"]) == (20, True)
    assert (await list_jobs(client, state="queued")).json() == {"data": [], "has_more": False, "last_id": None}


@pytest.mark.parametrize(
    ("params", "names"),
    [
        ({"state": "done"}, "state"),
        ({"state": ""}, "state"),
        ({"limit": 0}, "limit"),
        ({"limit": 101}, "limit"),
        ({"limit": "ten"}, "limit"),
        ({"after": "not-a-job"}, "after"),
    ],
)
async def test_a_bad_parameter_is_a_400_that_names_it(
    service: JobService, client: httpx.AsyncClient, params: dict[str, Any], names: str
) -> None:
    cancelled_jobs(service, 1)
    response = await list_jobs(client, **params)
    assert response.status_code == 400
    assert response.json()["error"].startswith(f"{names}: ")


async def test_options_on_the_jobs_collection_names_both_methods(client: httpx.AsyncClient) -> None:
    response = await client.options("/v1/jobs")
    assert response.status_code == 204
    assert response.headers["allow"] == "GET, OPTIONS, POST"


async def test_the_openapi_document_lists_the_parameters_and_their_limits(client: httpx.AsyncClient) -> None:
    operation = (await client.get("/schema/openapi.json")).json()["paths"]["/v1/jobs"]["get"]
    params = {param["name"]: param["schema"] for param in operation["parameters"]}
    assert params["state"]["enum"] == ["queued", "running", "succeeded", "failed", "cancelled", "expired"]
    assert (params["limit"]["minimum"], params["limit"]["maximum"], params["limit"]["default"]) == (1, 100, 20)
    assert set(params) == {"state", "limit", "after"}
