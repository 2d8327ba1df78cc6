"""Many concurrent clients: every job they submit completes, with its own output."""

from __future__ import annotations

import random
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from para_attn_server.testing import Server

pytestmark = pytest.mark.timeout(180)

CLIENTS = 8
JOBS_PER_CLIENT = 8


@pytest.fixture(scope="module")
def server(launch) -> Server:
    return launch("--model", "noop", "--num-devices", "2")


def client(url: str, sizes: list[int]) -> list[tuple[int, int]]:
    """One client: submit its jobs, then collect each; returns (asked, got) sizes."""
    with httpx.Client(base_url=url, timeout=120) as http:
        ids = []
        for size in sizes:
            response = http.post("/generate", json={"size": size, "steps": 2})
            assert response.status_code == 202, response.text
            ids.append(response.json()["request_id"])
        results = []
        for size, request_id in zip(sizes, ids, strict=True):
            job = http.get(f"/v1/jobs/{request_id}", params={"wait": 100}).json()
            assert job["state"] == "succeeded", job
            results.append((size, len(http.get(f"/v1/jobs/{request_id}/output").content)))
        return results


def test_concurrent_clients_get_every_job_completed(server: Server) -> None:
    rng = random.Random(0)
    plans = [[rng.randrange(1, 4096) for _ in range(JOBS_PER_CLIENT)] for _ in range(CLIENTS)]
    with ThreadPoolExecutor(CLIENTS) as pool:
        results = [pair for per_client in pool.map(lambda p: client(server.url, p), plans) for pair in per_client]
    assert len(results) == CLIENTS * JOBS_PER_CLIENT
    assert all(asked == got for asked, got in results)
    assert server.status()["queue_length"] == 0
    assert server.restarts() == 0
