"""Job records survive a restart of the server process (SQLite under --output-dir).

- SIGKILL: the jobs that were queued or running are queued again and run after the restart
  (a job the server died under twice already fails with "server restarted" instead: unit
  tested in tests/unit/engine); finished outputs stay downloadable until their TTL, then
  answer 404 and their files go.
- SIGTERM drains first (README): the queued jobs end ``cancelled`` ("server shutting
  down"), the running one finishes or is cancelled; after the restart every one of them is
  still known with that end. A record whose TTL ran out while the server was down is gone
  as soon as the server is back.

The TTL applied is the restarted server's own ``--result-ttl``.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import sqlite3
import time
from pathlib import Path

import pytest

from para_attn_server.testing import Server, pid_gone
from tests.reliability.support import until

pytestmark = pytest.mark.timeout(240)

FAULTY = ["--model", "tests.predictors:Faulty", "--num-devices", "1"]
TTL_AFTER_KILL = 20.0  # long enough to see outputs after the restart, short enough to see them go


def journal_states(server: Server) -> dict[str, str]:
    path = server.output_dir / ".jobs" / "jobs.sqlite3"
    with sqlite3.connect(path, timeout=10) as db:
        return dict(db.execute("SELECT id, state FROM jobs").fetchall())


def start(servers: list[Server], workdir: Path, *args: str) -> Server:
    server = Server([*FAULTY, *args], workdir)
    servers.append(server)
    return server


def test_sigkill_requeues_unfinished_jobs_and_keeps_outputs_until_their_ttl(
    servers: list[Server], tmp_path: Path
) -> None:
    first = start(servers, tmp_path)
    done = first.run(tag="done")
    named = first.run(tag="named", output_path="kept/named.json")
    output = first.output(done["id"])
    hold = tmp_path / "hold"
    running = first.submit(tag="running", hold=str(hold))
    first.wait_running(running)
    queued = first.submit(tag="queued")
    expected = {done["id"]: "succeeded", named["id"]: "succeeded", running: "running", queued: "queued"}
    # Records are written in batches (every 50 ms): kill once these are on disk.
    until(lambda: journal_states(first) == expected, 10, "journal written")
    ranks = first.rank_pids()
    os.kill(first.process.pid, signal.SIGKILL)
    first.process.wait(30)
    until(lambda: all(pid_gone(pid) for pid in ranks), 30, "ranks exit once the server is gone")

    hold.touch()  # the job that was running may finish when it runs again
    second = start(servers, tmp_path, "--result-ttl", str(TTL_AFTER_KILL))
    second.log.wait_for(r"recovered 4 job record\(s\)")
    assert second.http.get(f"/v1/jobs/{done['id']}").json() == done  # the same record
    assert second.output(done["id"]) == output
    body = second.http.post(f"/get_output/{done['id']}").json()
    assert (base64.b64decode(body["output"]), body["file_type"]) == (output, "json")
    assert json.loads(second.output(named["id"]))["tag"] == "named"
    # A client that retries its submission after the restart gets the recorded job back.
    again = second.http.put(f"/v1/jobs/{done['id']}", json={"tag": "done"})
    assert (again.status_code, again.json()["id"]) == (200, done["id"])
    assert second.restarts() == 0

    copy = second.output_dir / ".jobs" / f"{done['id']}.json"
    assert copy.exists()
    deadline = done["finished_at"] + TTL_AFTER_KILL
    assert time.time() < deadline, "the restart took longer than the TTL: nothing left to check"
    for job_id, tag in ((running, "running"), (queued, "queued")):
        assert second.wait(job_id)["state"] == "succeeded"  # queued again, and run
        legacy = second.http.get(f"/get_output/{job_id}")
        assert legacy.status_code == 200, legacy.text
        assert json.loads(base64.b64decode(legacy.json()["output"]))["tag"] == tag
    until(lambda: second.http.get(f"/v1/jobs/{done['id']}").status_code == 404, TTL_AFTER_KILL + 10, "expiry")
    assert time.time() >= deadline  # not before its TTL
    for path in (f"/v1/jobs/{done['id']}/output", f"/get_output/{done['id']}", f"/v1/jobs/{named['id']}"):
        assert second.http.get(path).status_code == 404
    assert not copy.exists()
    # The file the client named is the client's: it outlives the record.
    assert json.loads((second.output_dir / "kept" / "named.json").read_text())["tag"] == "named"
    until(lambda: done["id"] not in journal_states(second), 10, "record deleted from the journal")


def test_sigterm_drains_then_the_restart_reports_how_each_job_ended(servers: list[Server], tmp_path: Path) -> None:
    first = start(servers, tmp_path, "--drain-timeout", "30")
    done = first.run(tag="done")
    output = first.output(done["id"])
    hold = tmp_path / "hold"
    running = first.submit(tag="drained", hold=str(hold))
    first.wait_running(running)
    queued = first.submit(tag="queued")
    first.terminate()
    first.log.wait_for("draining")
    hold.touch()  # draining waits for the running job
    assert first.process.wait(60) == 0

    second = start(servers, tmp_path)
    second.log.wait_for(r"recovered 3 job record\(s\)")
    views = {job_id: second.http.get(f"/v1/jobs/{job_id}").json() for job_id in (done["id"], running, queued)}
    assert views[done["id"]] == done
    assert second.output(done["id"]) == output
    assert views[running]["state"] == "succeeded"
    assert json.loads(second.output(running))["tag"] == "drained"
    assert (views[queued]["state"], views[queued]["error"]) == ("cancelled", "server shutting down")
    assert second.stop() == 0

    # Back with a TTL that every record outlived while the server was down: gone at once,
    # before the periodic expiry could have run.
    ttl = 1.0
    assert all(time.time() - view["finished_at"] > ttl for view in views.values())
    third = start(servers, tmp_path, "--result-ttl", str(ttl))
    third.log.wait_for(r"recovered 3 job record\(s\)")
    for job_id in views:
        assert third.http.get(f"/v1/jobs/{job_id}").status_code == 404
    assert not list((third.output_dir / ".jobs").glob("*.json"))
