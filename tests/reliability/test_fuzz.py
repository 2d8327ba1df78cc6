"""Schemathesis against the server's own OpenAPI document, over real HTTP: no 5xx, and every
answer (status code, content type, headers, body) as the document says.

Two servers: ``noop`` with an API key (so the document declares its security schemes and
schemathesis also checks that requests without the key are refused), and the real ``tiny``
pipeline for its fields. Run through the ``st`` command (a subprocess: its hooks and
settings stay out of this pytest process); its NDJSON report is where the request counts
come from. fuzz_hooks.py lowers costly-but-valid job sizes so the run takes seconds. The
seed is fixed (reproducible CI); ``PARA_ATTN_FUZZ_SEED=random`` and a larger
``PARA_ATTN_FUZZ_EXAMPLES`` (30 per operation by default) search further.

Every check runs but ``positive_data_acceptance``: whether a schema-valid ``output_path``
is usable depends on the output directory at that moment (symlinks, existing directories),
which the document describes in words but no schema can express, so a valid-looking path can
rightly be a 400. Unknown job ids answer 404 (documented on every route that takes an id).
"""

from __future__ import annotations

import base64
import json
import os
import re
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from para_attn_server.testing import Server, server_env
from tests import REPO
from tests.reliability.support import Report

pytestmark = pytest.mark.timeout(300)

ST = Path(sys.executable).with_name("st")
# A fixed seed keeps CI reproducible; PARA_ATTN_FUZZ_SEED=random (or a number) explores.
DEFAULT_SEED = "20261126"
EXAMPLES = int(os.environ.get("PARA_ATTN_FUZZ_EXAMPLES", "30"))
CHECKS = {
    "not_a_server_error", "status_code_conformance", "content_type_conformance", "response_headers_conformance",
    "response_schema_conformance", "negative_data_rejection", "unsupported_method", "allow_header_conformance",
}  # fmt: skip
KEY = "fuzz-key"


@pytest.fixture(scope="module")
def noop(launch: Callable[..., Server]) -> Server:
    server = launch("--model", "noop", "--num-devices", "1", "--api-key", KEY)
    server.http.headers["X-API-Key"] = KEY  # for this module's own requests, not schemathesis'
    return server


@pytest.fixture(scope="module")
def tiny(launch: Callable[..., Server]) -> Server:
    return launch("--model", "tiny", "--num-devices", "1")


def fuzz(
    server: Server, tmp_path: Path, examples: int, key: str | None = None, paths: str | None = None
) -> dict[str, Any]:
    """Run st against ``server`` (only the paths matching the ``paths`` regex, if given)."""
    document = server.http.get("/schema/openapi.json")
    assert document.status_code == 200
    (tmp_path / "openapi.json").write_bytes(document.content)
    config = tmp_path / "schemathesis.toml"
    settings = [
        "[checks]\npositive_data_acceptance.enabled = false",
        # schemathesis 4.32 marks some POST /cancel cases "negative body" and then sends no
        # body at all, which this route rightly accepts: that check is off for it alone.
        '[[operations]]\ninclude-path = "/cancel"\ninclude-method = "POST"',
        "checks.negative_data_rejection.enabled = false",
    ]
    if key:  # so schemathesis knows the right credentials for each declared scheme
        settings.insert(0, f'[auth.openapi.apiKey]\napi_key = "{key}"\n[auth.openapi.bearer]\nbearer = "{key}"')
    config.write_text("\n".join(settings) + "\n")
    events = tmp_path / "events.ndjson"
    command = [
        str(ST), "--config-file", str(config), "run", str(tmp_path / "openapi.json"), "--url", server.url,
        "--phases", "examples,coverage,fuzzing", "--max-examples", str(examples),
        "--request-timeout", "60", "--generation-database", "none", "--no-color",
        "--report", "ndjson", "--report-ndjson-path", str(events),
    ]  # fmt: skip
    if paths:
        command += ["--include-path-regex", paths]
    seed = os.environ.get("PARA_ATTN_FUZZ_SEED", DEFAULT_SEED)
    if seed != "random":
        command += ["--seed", seed]
    env = server_env(SCHEMATHESIS_HOOKS="tests.reliability.fuzz_hooks")
    started = time.monotonic()
    done = subprocess.run(
        command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240, check=False
    )  # fmt: skip
    seconds = time.monotonic() - started
    assert done.returncode == 0, done.stdout[-8000:] + done.stderr[-2000:]

    operations = {
        f"{method.upper()} {path}"
        for path, methods in json.loads(document.content)["paths"].items()
        for method in methods
        if paths is None or re.search(paths, path)
    }
    requests: Counter[str] = Counter()
    statuses: Counter[int] = Counter()
    checks: set[str] = set()
    for line in events.read_text().splitlines():
        finished = json.loads(line).get("ScenarioFinished")
        if not finished:
            continue
        for results in (finished["recorder"].get("checks") or {}).values():
            checks.update(result["name"] for result in results)
        interactions = finished["recorder"].get("interactions") or {}
        for interaction in interactions.values():
            response = interaction.get("response")
            if response is None:
                continue
            requests[finished["recorder"]["label"]] += 1
            statuses[response["status_code"]] += 1
            body = base64.b64decode((response.get("content") or {}).get("$base64", ""))
            assert b"Traceback" not in body, body[:500]
    seed = next((line for line in done.stdout.splitlines() if line.startswith("Seed:")), "")
    return {
        "checks": checks,
        "operations": operations,
        "requests": requests,
        "statuses": statuses,
        "seconds": seconds,
        "seed": seed.partition(":")[2].strip(),
    }


def check_and_record(result: dict[str, Any], report: Report, server: str, least: int) -> None:
    requests, statuses = result["requests"], result["statuses"]
    assert result["checks"] >= CHECKS, CHECKS - result["checks"]
    missing = {op for op in result["operations"] if not any(label.startswith(op) for label in requests)}
    assert not missing, f"operations never requested: {missing}"
    assert sum(requests.values()) >= least, requests
    assert not [code for code in statuses if code >= 500], statuses
    report.add(
        "Fuzzing",
        server=server,
        operations=len(result["operations"]),
        requests=sum(requests.values()),
        statuses=dict(sorted(statuses.items())),
        seconds=round(result["seconds"], 1),
        seed=result["seed"],
    )


def test_fuzz_noop_server_with_api_key(noop: Server, tmp_path: Path, report: Report) -> None:
    result = fuzz(noop, tmp_path, examples=EXAMPLES, key=KEY)
    check_and_record(result, report, "noop, --api-key", least=1000)
    assert "ignored_auth" in result["checks"]
    assert 401 in result["statuses"]  # requests without the key were made, and refused
    assert noop.restarts() == 0


def test_fuzz_tiny_pipeline_fields(tiny: Server, tmp_path: Path, report: Report) -> None:
    # The routes that take the pipeline's own fields; the noop run covers every route.
    result = fuzz(tiny, tmp_path, examples=max(1, EXAMPLES * 2 // 3), paths=r"^/(generate|v1/jobs(/\{job_id\})?)$")
    assert len(result["operations"]) == 5  # POST /generate, POST and GET /v1/jobs, PUT and GET /v1/jobs/{id}
    check_and_record(result, report, "tiny (real Flux pipeline): submit routes", least=300)
    assert 201 in result["statuses"]  # real jobs ran
    assert tiny.restarts() == 0


def test_hooks_module_is_importable_from_the_repository() -> None:
    # st imports it by name from the server's PYTHONPATH: guard the name and the location.
    assert (REPO / "tests" / "reliability" / "fuzz_hooks.py").exists()
