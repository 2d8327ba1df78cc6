"""A fleet on one machine: a front (``--num-devices 0``: it queues, serves HTTP and journals)
and two ``join`` processes that bring two groups of one rank each ("hosts" A and B, on
127.0.0.1). Four groups over two hosts behind one queue; a host killed mid-job costs no job;
a host that drains finishes its job and leaves; a host that joins again serves again."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from para_attn_server.cluster.auth import JoinAuth
from para_attn_server.cluster.spec import HOSTS_ROUTE
from para_attn_server.testing import Server
from tests.integration.support import Join

pytestmark = pytest.mark.timeout(300)

TOKEN = "fleet-token-for-the-tests"
SECOND = {"steps": 10, "step_seconds": 0.1}  # a one-second noop job
LONG = {"steps": 40, "step_seconds": 0.1}


def join(server: Server, name: str, *args: str) -> Join:
    return Join(server.url, TOKEN, "--num-devices", "2", "--group-size", "1", "--name", name, *args)


def hosts(server: Server) -> dict[str, dict[str, Any]]:
    response = server.http.get("/v1/cluster")
    assert response.status_code == 200, response.text
    return {host["name"]: host for host in response.json()["hosts"]}


def wait_serving(server: Server, *names: str, groups: int = 2, timeout: float = 120) -> None:
    """Until each host named serves with its ``groups`` groups, all ready."""
    deadline = time.monotonic() + timeout
    while True:
        status = server.status()
        ready = {group["group"] for group in status["groups"] if group["ready"]}
        rows = {host["name"]: host for host in status["hosts"]}
        if all(n in rows and rows[n]["state"] == "serving" and set(rows[n]["groups"]) <= ready for n in names) and all(
            len(rows[n]["groups"]) == groups for n in names
        ):
            return
        assert time.monotonic() < deadline, f"hosts {names} not serving: {rows}\n{server.log.tail()}"
        time.sleep(0.2)


def submit_all(server: Server, count: int, **inputs: Any) -> list[str]:
    return [server.submit(**inputs) for _ in range(count)]


@pytest.fixture(scope="module")
def fleet(launch: Any) -> Iterator[tuple[Server, dict[str, Join]]]:
    server = launch(
        "--model", "noop", "--num-devices", "0", "--join-token", TOKEN, "--host-timeout", "5", "--drain-timeout", "20",
        wait_ready=False,
    )  # fmt: skip
    joins = {"A": join(server, "host-a"), "B": join(server, "host-b")}
    try:
        wait_serving(server, "host-a", "host-b")
        yield server, joins
    finally:
        for process in joins.values():
            process.stop()


def test_a_front_with_no_devices_queues_and_reports_not_ready_until_hosts_join(launch: Any) -> None:
    server = launch("--model", "noop", "--num-devices", "0", "--join-token", TOKEN, wait_ready=False)
    server.log.wait_for(r"ready: 0 rank\(s\) of 'noop' \(none here: a front")
    assert httpx.get(f"{server.url}/health/ready").status_code == 503
    job_id = server.submit(steps=1)  # accepted and journaled: it waits for a host
    assert server.http.get(f"/v1/jobs/{job_id}").json()["state"] == "queued"
    late = join(server, "late")
    try:
        assert server.wait(job_id, 120)["host"] == "late"
    finally:
        late.stop()
    assert late.process.returncode == 0


def test_four_one_second_jobs_run_at_once_on_four_groups_over_two_hosts(
    fleet: tuple[Server, dict[str, Join]],
) -> None:
    server, _ = fleet
    began = time.monotonic()
    views = [server.wait(job_id) for job_id in submit_all(server, 4, **SECOND)]
    took = time.monotonic() - began
    print(f"four one-second jobs on four groups took {took:.2f} s")
    assert [view["state"] for view in views] == ["succeeded"] * 4
    assert len({view["group"] for view in views}) == 4
    assert sorted(view["host"] for view in views) == ["host-a", "host-a", "host-b", "host-b"]
    assert max(view["started_at"] for view in views) < min(view["finished_at"] for view in views)  # all at once
    rows = hosts(server)
    assert rows["host-a"]["runs"] >= 2
    assert rows["host-b"]["runs"] >= 2
    assert (rows["host-a"]["devices"], rows["host-a"]["group_size"]) == (2, 1)


def test_a_host_killed_mid_job_costs_no_job_and_a_new_join_serves_again(
    fleet: tuple[Server, dict[str, Join]],
) -> None:
    server, joins = fleet
    job_ids = submit_all(server, 4, **LONG)
    for job_id in job_ids:
        server.wait_running(job_id, step=1)
    on_a = [j for j in job_ids if server.http.get(f"/v1/jobs/{j}").json()["host"] == "host-a"]
    assert len(on_a) == 2
    joins["A"].kill()

    views = {job_id: server.wait(job_id, 120) for job_id in job_ids}
    assert {view["state"] for view in views.values()} == {"succeeded"}
    for job_id in on_a:
        first, second = views[job_id]["attempts"]
        assert "host-a" in first["fault"], first
        assert first["host"] == "host-a"
        assert (second["host"], second["fault"]) == ("host-b", None)
    for job_id in set(job_ids) - set(on_a):
        assert views[job_id]["host"] == "host-b"
        assert "attempts" not in views[job_id]

    joins["A"] = join(server, "host-a")
    wait_serving(server, "host-a")
    again = [server.wait(job_id) for job_id in submit_all(server, 4, **SECOND)]
    assert {view["host"] for view in again} == {"host-a", "host-b"}


def test_sigterm_drains_a_host_its_job_finishes_and_it_gets_no_more(fleet: tuple[Server, dict[str, Join]]) -> None:
    server, joins = fleet
    job_ids = submit_all(server, 4, **LONG)
    for job_id in job_ids:
        server.wait_running(job_id, step=1)
    joins["B"].process.terminate()
    assert joins["B"].wait(120) == 0
    views = [server.wait(job_id) for job_id in job_ids]
    assert [view["state"] for view in views] == ["succeeded"] * 4
    assert all("attempts" not in view for view in views)  # each ran once, on its first host
    assert sorted(view["host"] for view in views) == ["host-a", "host-a", "host-b", "host-b"]
    row = hosts(server)["host-b"]
    assert (row["state"], row["groups"]) == ("left", [])
    after = [server.wait(job_id) for job_id in submit_all(server, 3, **SECOND)]
    assert {view["host"] for view in after} == {"host-a"}
    assert server.http.get("/v1/jobs", params={"state": "failed"}).json()["data"] == []


def test_a_host_whose_groups_differ_is_refused_with_the_reason(fleet: tuple[Server, dict[str, Join]]) -> None:
    server, _ = fleet
    odd = Join(server.url, TOKEN, "--num-devices", "2", "--group-size", "2", "--name", "odd")
    assert odd.wait(120) == 2
    assert "--group-size 2: the server's groups have 1 rank(s)" in odd.log.text
    wrong = Join(server.url, "not-the-token", "--num-devices", "1", "--name", "wrong")
    assert wrong.wait(120) == 2
    assert "did not prove that it holds the join token" in wrong.log.text
    offer = {"name": "x", "server_version": "0", "plugins": [], "num_devices": 1, "group_size": None, "device": "cpu"}
    assert server.http.post(HOSTS_ROUTE, json=offer).status_code == 401
    assert server.http.post(HOSTS_ROUTE, json=offer, headers={"X-Join-Token": TOKEN}).status_code == 401
    with httpx.Client(base_url=server.url, auth=JoinAuth(TOKEN, HOSTS_ROUTE), timeout=60) as signed:
        refused = signed.post(HOSTS_ROUTE, json=offer)
    assert refused.status_code == 409
    assert "here, " in refused.json()["error"]
    assert "odd" not in hosts(server)
