"""A fleet as an operator sees it: ``/metrics`` and the web page of a front
(``--num-devices 0``: no group, so no local host) that one host joined ("host-a": two
groups of one rank each, noop). The host's series and its row on the page say its state,
groups, devices and job runs; once it drains and leaves, both say so.

The tests share one fleet, in order: the last one makes the host leave.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from playwright.sync_api import Page, expect

from para_attn_server.testing import Server
from tests.integration import test_webui
from tests.integration.support import Join, scrape

pytestmark = pytest.mark.timeout(300)
# The web page tests' fixtures (Debian's chromium through Playwright), found here by name.
browser = test_webui.browser
open_page = test_webui.open_page

TOKEN = "fleet-surfaces-token-for-the-tests"
HOST = "host-a"


def host_row(server: Server) -> dict[str, Any]:
    response = server.http.get("/v1/cluster")
    assert response.status_code == 200, response.text
    rows = {host["name"]: host for host in response.json()["hosts"]}
    assert set(rows) <= {HOST}, rows  # the front brings no host of its own
    return rows.get(HOST, {})


def wait_serving(server: Server, timeout: float = 120) -> None:
    """Until the host serves with its two groups, both ready."""
    deadline = time.monotonic() + timeout
    while True:
        status = server.status()
        ready = {group["group"] for group in status["groups"] if group["ready"]}
        row = {host["name"]: host for host in status["hosts"]}.get(HOST, {})
        if row.get("state") == "serving" and len(row["groups"]) == 2 and set(row["groups"]) <= ready:
            return
        assert time.monotonic() < deadline, f"{HOST} not serving: {status['hosts']}\n{server.log.tail()}"
        time.sleep(0.2)


def states(scraped: Any, host: str) -> list[str]:
    """The states para_attn_host_state says the host is in (exactly one, if right)."""
    return [
        s.labels["state"]
        for s in scraped.samples
        if s.name == "para_attn_host_state" and s.labels["host"] == host and s.value == 1
    ]


@pytest.fixture(scope="module")
def fleet(launch: Any) -> Iterator[tuple[Server, Join]]:
    server = launch(
        "--model", "noop", "--num-devices", "0", "--join-token", TOKEN, "--drain-timeout", "20", wait_ready=False
    )  # fmt: skip
    host = Join(server.url, TOKEN, "--num-devices", "2", "--group-size", "1", "--name", HOST)
    try:
        wait_serving(server)
        yield server, host
    finally:
        host.stop()


def test_the_joined_hosts_series_say_its_groups_devices_and_runs(fleet: tuple[Server, Join]) -> None:
    server, _ = fleet
    before = scrape(server).get("para_attn_host_runs_total", host=HOST)
    views = [server.wait(job_id) for job_id in [server.submit(steps=2) for _ in range(3)]]
    assert [(view["state"], view["host"]) for view in views] == [("succeeded", HOST)] * 3

    m = scrape(server)
    row = host_row(server)
    assert m.value("para_attn_host_up", host=HOST) == 1
    assert states(m, HOST) == ["serving"]
    assert m.value("para_attn_host_groups", host=HOST) == 2
    assert m.value("para_attn_host_devices", host=HOST) == 2
    assert m.value("para_attn_host_runs_total", host=HOST) == before + 3 == row["runs"]
    assert 0 <= m.value("para_attn_host_last_seen_seconds", host=HOST) < 60
    for group in row["groups"]:
        assert m.value("para_attn_group_ready", group=str(group), host=HOST) == 1
        assert m.value("para_attn_group_ranks", group=str(group), host=HOST) == 1
    # The front runs no group: every host and group series is the joined host's.
    assert {s.labels["host"] for s in m.samples if s.name in ("para_attn_host_up", "para_attn_group_ready")} == {HOST}


def test_the_page_lists_the_joined_host_and_its_groups_ready_or_busy(
    fleet: tuple[Server, Join], open_page: Callable[..., Page]
) -> None:
    server, _ = fleet
    groups = sorted(host_row(server)["groups"])
    page = open_page(server)
    row = page.locator(f'#hosts-list tr[data-host="{HOST}"]')
    expect(row.locator(".host-state")).to_have_text("serving")
    expect(page.locator("#hosts-list tr")).to_have_count(1)  # no local host on a front
    expect(row.locator(".host-devices")).to_have_text("2")
    expect(row.locator(".group")).to_have_text([f"group {group}: ready" for group in groups])

    job_id = server.submit(steps=100_000, step_seconds=0.05)
    server.wait_running(job_id)
    busy = server.http.get(f"/v1/jobs/{job_id}").json()["group"]
    shown = [f"group {group}: {'busy' if group == busy else 'ready'}" for group in groups]
    expect(row.locator(".group")).to_have_text(shown)  # the page refreshed while open
    expect(row.locator(".host-runs")).to_have_text(str(host_row(server)["runs"]))
    assert server.http.post(f"/v1/jobs/{job_id}/cancel").status_code == 200
    expect(row.locator(".group")).to_have_text([f"group {group}: ready" for group in groups])
    expect(page.locator("#hosts-note")).to_be_empty()


def test_a_host_that_drains_and_leaves_shows_left_with_no_groups(
    fleet: tuple[Server, Join], open_page: Callable[..., Page]
) -> None:
    server, host = fleet
    page = open_page(server)
    row = page.locator(f'#hosts-list tr[data-host="{HOST}"]')
    expect(row.locator(".host-state")).to_have_text("serving")
    runs = host_row(server)["runs"]
    assert runs > 0

    host.process.terminate()  # SIGTERM: it drains, then leaves
    assert host.wait(120) == 0

    expect(row.locator(".host-state")).to_have_text("left")
    expect(row.locator(".host-groups")).to_have_text("none")
    expect(page.locator("#hosts-note")).to_have_text("No host serves yet: jobs wait in the queue until one joins.")
    m = scrape(server)
    assert m.value("para_attn_host_up", host=HOST) == 0
    assert states(m, HOST) == ["left"]
    assert m.value("para_attn_host_groups", host=HOST) == 0
    assert m.value("para_attn_host_devices", host=HOST) == 2
    assert m.value("para_attn_host_runs_total", host=HOST) == runs  # kept after it left
    assert not [s for s in m.samples if s.name == "para_attn_group_ready"]  # its groups are gone
