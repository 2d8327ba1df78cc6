"""While the ranks set up, the server answers but takes no jobs (503), and it becomes
ready only once every rank finished setup."""

from __future__ import annotations

from pathlib import Path

import pytest

from para_attn_server.testing import Server

pytestmark = pytest.mark.timeout(180)


@pytest.fixture(scope="module")
def release_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("release")


@pytest.fixture(scope="module")
def server(launch, release_dir: Path) -> Server:
    return launch(
        "--model", "tests.predictors:BlocksSetup", "--num-devices", "2", "-o", f"release_dir={release_dir}",
        wait_ready=False,
    )  # fmt: skip


def assert_not_ready(server: Server) -> None:
    assert server.http.get("/health/live").status_code == 200
    assert server.http.get("/health/ready").status_code == 503
    for method in ("GET", "POST"):
        status = server.http.request(method, "/server_status")
        assert status.status_code == 503
        assert status.json()["ready"] is False
        assert {row["state"] for row in status.json()["ranks"]} <= {"starting", "setting up"}
        assert len(status.json()["ranks"]) == 2
    for path in ("/generate", "/v1/jobs"):
        refused = server.http.post(path, json={"text": "too early"})
        assert refused.status_code == 503
        assert "retry-after" in refused.headers


def test_not_ready_while_every_rank_sets_up(server: Server) -> None:
    assert_not_ready(server)


def test_still_not_ready_while_one_rank_sets_up(server: Server, release_dir: Path) -> None:
    (release_dir / "rank0").touch()
    assert_not_ready(server)


def test_ready_once_every_rank_finished_setup(server: Server, release_dir: Path) -> None:
    (release_dir / "rank1").touch()
    server.wait_ready()
    assert server.http.get("/health/ready").status_code == 200
    status = server.status()
    assert status["ready"] is True
    assert {row["state"] for row in status["ranks"]} == {"ready"}
    response = server.http.post("/generate", json={"text": "now"})
    assert response.status_code == 202
    server.wait(response.json()["request_id"])
    assert server.http.get(f"/v1/jobs/{response.json()['request_id']}/output").content == b"now"
