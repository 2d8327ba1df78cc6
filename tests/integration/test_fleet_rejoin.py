"""A joined host across the server's and its own comings and goings: a drain that outlasts
--drain-timeout stops the job to run it again (a planned attempt, not a failure); a server
restarted on the same address and directory gets its host back by itself."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from para_attn_server.testing import Server, free_port
from tests.integration.support import Join
from tests.integration.test_fleet import TOKEN, hosts, wait_serving

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("front")


def front(workdir: Path, port: int) -> Server:
    args = ["--model", "noop", "--num-devices", "0", "--join-token", TOKEN, "--port", str(port)]
    return Server([*args, "--host-timeout", "3", "--drain-timeout", "1"], workdir, wait_ready=False)


def host(server: Server) -> Join:
    return Join(server.url, TOKEN, "--num-devices", "1", "--group-size", "1", "--name", "host-r")


@pytest.fixture(scope="module")
def port() -> int:
    return free_port()


@pytest.fixture
def joined() -> Iterator[list[Join]]:
    joins: list[Join] = []
    yield joins
    for join in joins:
        join.stop()


def test_a_drain_past_its_time_requeues_the_job_as_a_planned_attempt(
    workdir: Path, port: int, joined: list[Join]
) -> None:
    with front(workdir, port) as server:
        joined.append(host(server))
        wait_serving(server, "host-r", groups=1)
        job_id = server.submit(steps=50, step_seconds=0.1)
        server.wait_running(job_id, step=1)
        joined[0].process.terminate()
        assert joined[0].wait(60) == 0  # it left once its job stopped (drain-timeout 1 s)
        view = server.http.get(f"/v1/jobs/{job_id}").json()
        assert view["state"] == "queued"
        (attempt,) = view["attempts"]
        assert (attempt["planned"], attempt["host"]) == (True, "host-r")
        assert hosts(server)["host-r"]["state"] == "left"

        joined.append(host(server))
        view = server.wait(job_id, 120)
        assert view["state"] == "succeeded", (view["error"], view["attempts"])
        assert [a["planned"] for a in view["attempts"]] == [True, False]


def test_a_join_gets_back_in_by_itself_after_the_server_restarts(workdir: Path, port: int, joined: list[Join]) -> None:
    with front(workdir, port) as server:
        joined.append(host(server))
        wait_serving(server, "host-r", groups=1)
        assert server.run(steps=1)["host"] == "host-r"
    # The server is gone (drained: it stopped the host's ranks); the join waits for it.
    with front(workdir, port) as again:
        wait_serving(again, "host-r", groups=1)
        assert again.run(steps=1)["host"] == "host-r"
    assert joined[0].process.poll() is None  # the same join throughout
    assert "joining again" in joined[0].log.text or "cannot reach" in joined[0].log.text
