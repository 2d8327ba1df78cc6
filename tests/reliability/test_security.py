"""Security: API key, request body limit, output_path confinement, loopback bind, and no
stack traces or file paths in what clients are told.

tests/integration/test_output_paths.py covers traversal, absolute paths, NUL bytes, hidden
components and symlinks present at submission on /generate and /v1/jobs; this module adds
the PUT route, over-long names, backslashes, directories, and symlinks or files that appear
*after* a job was accepted (the write re-checks).
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from para_attn_server.testing import Server, pid_gone
from tests import REPO
from tests.integration.support import metric

pytestmark = pytest.mark.timeout(180)

KEY = "s3cret-" + uuid.uuid4().hex
MAX_BODY = 4096
UNAUTHORIZED = {"error": "missing or invalid API key"}
# The openai plugin's routes refuse in OpenAI's error shape, which its clients read.
# The OpenAI API's routes answer in its error shape; a model's request schema is the core's.
OPENAI_ROUTES = re.compile(r"^/v1/(images|videos|models)(/|$)(?!.*/schema$)")
OPENAI_UNAUTHORIZED = {
    "error": {
        "message": "missing or invalid API key", "type": "invalid_request_error", "param": None,
        "code": "invalid_api_key",
    }
}  # fmt: skip
LOOPBACK = {"127.0.0.1", "::1"}


@pytest.fixture(scope="module")
def secured(launch: Callable[..., Server]) -> Server:
    # No --host: the default bind is under test too.
    server = launch(
        "--model", "tests.predictors:Faulty", "--num-devices", "1", "--api-key", KEY,
        "--max-body-bytes", str(MAX_BODY),
    )  # fmt: skip
    server.http.headers["X-API-Key"] = KEY
    return server


@pytest.fixture
def anonymous(secured: Server) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=secured.url, timeout=60) as client:
        yield client


def routes(server: Server) -> list[tuple[str, str]]:
    """(method, path) of every operation in the server's OpenAPI document, ids filled in."""
    document = server.http.get("/schema/openapi.json").json()
    found = []
    for path, operations in document["paths"].items():
        concrete = re.sub(r"\{[^}]+\}", str(uuid.uuid4()), path)
        found += [(method.upper(), concrete) for method in operations if method != "parameters"]
    assert len(found) >= 17, found
    return found


# ---- where it listens ---------------------------------------------------------------------


def listeners(pid: int) -> set[tuple[str, int]]:
    return {(c.laddr.ip, c.laddr.port) for c in psutil.Process(pid).net_connections("inet") if c.status == "LISTEN"}


def test_listens_on_loopback_by_default(secured: Server) -> None:
    line = secured.log.wait_for(r"listening on http://(\S+):(\d+)")
    assert line[1] == "127.0.0.1"
    sockets = listeners(secured.process.pid)  # the HTTP port and the ranks' control port
    assert ("127.0.0.1", int(line[2])) in sockets
    assert {ip for ip, _ in sockets} <= LOOPBACK, sockets


def test_rank_processes_listen_on_loopback_only(secured: Server) -> None:
    # The rendezvous store is hosted by the executor on loopback, not by rank 0 on '::'.
    sockets = {s for pid in secured.rank_pids() for s in listeners(pid)}
    assert sockets
    assert {ip for ip, _ in sockets} <= LOOPBACK, sockets


# ---- API key ------------------------------------------------------------------------------


def test_every_endpoint_but_liveness_refuses_a_missing_or_wrong_key(secured: Server, anonymous: httpx.Client) -> None:
    guarded = [route for route in routes(secured) if route != ("GET", "/health/live")]
    for method, path in [*guarded, ("GET", "/schema/openapi.json"), ("GET", "/schema")]:
        for headers in (
            {},
            {"X-API-Key": "wrong"},
            {"Authorization": "Bearer wrong"},
            {"Authorization": f"Basic {KEY}"},  # not a bearer token
            {"X-API-Key": KEY, "Authorization": "Bearer wrong"},  # a wrong key beside the right one
        ):
            response = anonymous.request(method, path, headers=headers, json={})
            assert response.status_code == 401, (method, path, headers, response.text)
            assert response.json() == (OPENAI_UNAUTHORIZED if OPENAI_ROUTES.match(path) else UNAUTHORIZED)
            assert response.headers["www-authenticate"] == "Bearer"
    assert anonymous.get("/health/live").json() == {"status": "live"}


@pytest.mark.parametrize("header", ["X-API-Key", "Authorization: Bearer", "Authorization: bearer"])
def test_every_endpoint_accepts_the_key(secured: Server, anonymous: httpx.Client, header: str) -> None:
    name, _, scheme = header.partition(": ")
    headers = {name: f"{scheme} {KEY}".strip()}
    seen = set()
    for method, path in routes(secured):
        response = anonymous.request(method, path, headers=headers, json={}, params={"wait": 0})
        assert response.status_code != 401, (method, path, response.text)
        seen.add(response.status_code)
        assert KEY not in response.text
    assert 200 in seen
    assert KEY not in secured.log.text


def test_api_key_from_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PARA_ATTN_SERVER_API_KEY", KEY)
    server = Server(["--model", "noop", "--num-devices", "1"], tmp_path)
    try:
        assert server.http.get("/server_status").status_code == 401
        assert server.http.get("/health/live").status_code == 200
        assert server.http.get("/server_status", headers={"Authorization": f"Bearer {KEY}"}).status_code == 200
        job = server.http.post("/v1/jobs", params={"wait": 30}, json={"size": 3}, headers={"X-API-Key": KEY})
        assert job.json()["state"] == "succeeded"
    finally:
        server.close()


# ---- request body limit ---------------------------------------------------------------------


def body_of(size: int) -> bytes:
    """A valid job body of exactly ``size`` bytes."""
    frame = json.dumps({"tag": ""}).encode()
    return json.dumps({"tag": "x" * (size - len(frame))}).encode()


def submitted(server: Server) -> float:
    return metric(server, "para_attn_jobs_submitted_total")


@pytest.mark.parametrize(("method", "path"), [("POST", "/generate"), ("POST", "/v1/jobs"), ("PUT", "/v1/jobs/{}")])
def test_body_over_max_body_bytes_is_413(secured: Server, method: str, path: str) -> None:
    path = path.format(uuid.uuid4())
    before = submitted(secured)
    headers = {"Content-Type": "application/json"}
    too_big = body_of(MAX_BODY + 1)
    declared = secured.http.request(method, path, content=too_big, headers=headers)
    chunked = secured.http.request(method, path, content=iter([too_big[:100], too_big[100:]]), headers=headers)
    assert "content-length" not in chunked.request.headers  # sent without a declared length
    for response in (declared, chunked):
        assert response.status_code == 413, response.text
        assert set(response.json()) == {"error"}
    assert submitted(secured) == before
    fits = secured.http.request(method, path, content=body_of(MAX_BODY), headers=headers)
    assert fits.status_code in (201, 202), fits.text
    assert submitted(secured) == before + 1


# ---- output_path ----------------------------------------------------------------------------


def files_under(root: Path) -> set[Path]:
    return {path for path in root.rglob("*") if ".jobs" not in path.parts}


@pytest.mark.parametrize(
    ("output_path", "says"),
    [
        ("../escape.json", "'..'"),
        ("/tmp/escape.json", "relative"),
        ("a/../../escape.json", "'..'"),
        ("..\\escape.json", "'/' as separator"),
        ("a\x00b.json", "NUL"),
        ("x" * 256 + ".json", "longer than 255 bytes"),
        ("a/" * 600 + "b.json", "output_path"),  # over the 1024 characters the schema allows
    ],
)
def test_bad_output_path_on_put_is_400_and_writes_nothing(secured: Server, output_path: str, says: str) -> None:
    before = files_under(secured.workdir)
    response = secured.http.put(f"/v1/jobs/{uuid.uuid4()}", json={"tag": "escape", "output_path": output_path})
    assert response.status_code == 400, response.text
    assert "output_path" in response.json()["error"]
    assert says in response.json()["error"]
    assert files_under(secured.workdir) == before


def test_output_path_naming_a_directory_is_400(secured: Server) -> None:
    (secured.output_dir / "a-directory").mkdir()
    response = secured.http.post("/v1/jobs", json={"output_path": "a-directory"})
    assert response.status_code == 400
    assert "names a directory" in response.json()["error"]


def held_job(server: Server, tmp_path: Path, output_path: str) -> tuple[str, Path]:
    hold = tmp_path / "hold"
    job_id = server.submit(tag="late", output_path=output_path, hold=str(hold))
    server.wait_running(job_id)
    return job_id, hold


@pytest.mark.parametrize("where", ["directory", "file"])
def test_symlink_planted_after_submission_is_not_followed(secured: Server, tmp_path: Path, where: str) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    name = f"late-{where}"
    output_path = f"{name}/x.json" if where == "directory" else f"{name}.json"
    job_id, hold = held_job(secured, tmp_path, output_path)  # accepted: nothing is there yet
    link = secured.output_dir / (name if where == "directory" else f"{name}.json")
    link.symlink_to(outside if where == "directory" else outside / "x.json")
    hold.touch()
    job = secured.wait(job_id)
    assert job["state"] == "failed"
    assert job["error"] == "could not write the output: output_path: leads outside the server's output directory"
    assert list(outside.iterdir()) == []


def test_output_path_through_a_file_fails_without_naming_server_paths(secured: Server, tmp_path: Path) -> None:
    job_id, hold = held_job(secured, tmp_path, "plain-file/x.json")
    (secured.output_dir / "plain-file").write_text("a file, not a directory")
    hold.touch()
    job = secured.wait(job_id)
    assert job["state"] == "failed"
    assert job["error"] == "could not write the output to plain-file/x.json: File exists"
    # The operator's log has the full path (its line may reach us just after the answer).
    secured.log.wait_for(re.escape(f"could not write {secured.output_dir}/plain-file/x.json"), timeout=30)


# ---- no traces, no paths --------------------------------------------------------------------


def assert_says_nothing_internal(response: httpx.Response, server: Server) -> None:
    text = response.text
    for marker in ("Traceback", 'File "', "site-packages", str(REPO), str(server.workdir), "/__w/"):
        assert marker not in text, (response.request.url, text)
    assert not re.search(r"\w\.(py|cc|cpp|h)\b", text), (response.request.url, text)


def test_bad_requests_and_failed_jobs_say_nothing_internal(secured: Server, tmp_path: Path) -> None:
    http = secured.http
    json_type = {"Content-Type": "application/json"}
    bad: list[tuple[str, str, dict[str, Any]]] = [
        ("POST", "/generate", {"content": b"{not json", "headers": json_type}),
        ("POST", "/generate", {"content": b'{"tag": "\xff\xfe"}', "headers": json_type}),  # not UTF-8
        ("POST", "/generate", {"content": b"[" * 1500 + b"]" * 1500, "headers": json_type}),  # deep
        ("POST", "/generate", {"content": b'{"tag": ' + b"[" * 1500 + b"]" * 1500 + b"}", "headers": json_type}),
        ("POST", "/generate", {"content": b"", "headers": json_type}),
        ("POST", "/generate", {"content": b'{"steps": 1e400}', "headers": json_type}),
        ("POST", "/generate", {"content": b'{"steps": 123456789012345678901234567890}', "headers": json_type}),
        ("POST", "/generate", {"json": {"steps": "3"}}),  # a string for an int: no lenient coercion
        ("POST", "/generate", {"json": {"hold": True}}),
        ("POST", "/generate", {"json": {"unknown": 1}}),
        ("POST", "/generate", {"json": {"output_path": "y" * 1000}}),
        ("POST", "/v1/jobs", {"params": {"wait": "soon"}, "json": {}}),
        ("POST", "/v1/jobs", {"params": {"wait": -1}, "json": {}}),
        ("PUT", "/v1/jobs/not-a-uuid", {"json": {}}),
        ("PUT", f"/v1/jobs/{uuid.uuid4()}", {"content": b"\x00\x01", "headers": json_type}),
        ("POST", "/cancel", {"content": b"[1, 2", "headers": json_type}),
        ("POST", "/cancel", {"json": {"request_id": 5}}),
        ("GET", "/v1/jobs/..%2F..%2Fetc%2Fpasswd", {}),
        ("GET", f"/v1/jobs/{uuid.uuid4()}/output", {"params": {"wait": 0.1}}),
        ("DELETE", "/generate", {}),
        ("GET", "/no/such/route", {}),
    ]
    for method, path, options in bad:
        response = http.request(method, path, **options)
        assert 400 <= response.status_code < 500, (method, path, response.status_code, response.text)
        assert set(response.json()) <= {"error", "field", "state"}, response.text
        assert_says_nothing_internal(response, secured)

    failed = secured.run(fault="raise", tag="fails")
    assert failed["state"] == "failed"
    for response in (
        http.get(f"/v1/jobs/{failed['id']}"),
        http.get(f"/v1/jobs/{failed['id']}/output"),  # 409 with the error
        http.get(f"/get_output/{failed['id']}"),  # 500 with the error: the original API's code
    ):
        assert "injected fault on rank 0" in response.text
        assert_says_nothing_internal(response, secured)
    secured.log.wait_for("Traceback", timeout=30)  # the trace went to the log, and only there
    assert not any(pid_gone(pid) for pid in secured.rank_pids())
