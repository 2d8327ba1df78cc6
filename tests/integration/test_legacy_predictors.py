"""Predictors and clients written for the original server work unchanged."""

from __future__ import annotations

import base64
import io
import json
import time
import urllib.error
import urllib.request
from typing import Any

import pytest
from PIL import Image

from para_attn_server.testing import Server

pytestmark = pytest.mark.timeout(180)


def original_client(url: str, body: dict[str, Any], timeout: float = 60) -> dict[str, Any]:
    """What a client of the original server does: POST /generate, then poll
    GET /get_output/<id> until it answers 200."""
    request = urllib.request.Request(
        f"{url}/generate", data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request) as response:
        request_id = json.load(response)["request_id"]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with urllib.request.urlopen(f"{url}/get_output/{request_id}") as response:
            if response.status == 200:
                result: dict[str, Any] = json.load(response)
                return result
        time.sleep(0.05)  # the original client's polling interval
    raise AssertionError(f"no output within {timeout} s")


@pytest.fixture(scope="module")
def tiny(launch) -> Server:
    return launch("--model", "tests.predictors:LegacyTiny", "--num-devices", "2", "--cancel-grace", "5")


@pytest.fixture(scope="module")
def interrupt(launch) -> Server:
    return launch("--model", "tests.predictors:LegacyInterruptPipe", "--num-devices", "2", "--cancel-grace", "3")


def test_original_client_gets_a_base64_png(tiny: Server) -> None:
    result = original_client(tiny.url, {"prompt": "an old client"})
    assert result["file_type"] == "png"
    image = Image.open(io.BytesIO(base64.b64decode(result["output"])))
    assert (image.format, image.size) == ("PNG", (32, 32))


def test_predictor_that_writes_output_path_itself(tiny: Server) -> None:
    result = original_client(tiny.url, {"prompt": "to a file", "output_path": "legacy.png"})
    assert result["output"] == "legacy.png"
    written = tiny.output_dir / "legacy.png"
    assert Image.open(written).format == "PNG"


def test_missing_field_of_an_untyped_predict_is_400(tiny: Server) -> None:
    response = tiny.http.post("/generate", json={"num_inference_steps": 2})
    assert response.status_code == 400
    assert "prompt" in response.json()["error"]


def test_cancel_stops_a_legacy_pipeline_through_its_injected_step_callback(tiny: Server) -> None:
    steps = 50
    job_id = tiny.http.post("/generate", json={"prompt": "long", "num_inference_steps": steps, "step_seconds": 0.1})
    request_id = job_id.json()["request_id"]
    tiny.wait_running(request_id, step=1)  # progress comes from the injected callback
    response = tiny.http.post("/cancel")
    assert (response.status_code, response.json()["state"]) == (200, "cancelled")
    job = tiny.wait(request_id)
    assert job["state"] == "cancelled"
    assert job["step"] < steps
    assert "error" not in job or "restarted" not in job["error"]
    assert tiny.restarts() == 0
    assert original_client(tiny.url, {"prompt": "after"})["file_type"] == "png"


def test_cancel_sets_interrupt_on_every_rank_for_a_pipe_without_step_callback(interrupt: Server) -> None:
    done = original_client(interrupt.url, {"num_inference_steps": 3})
    assert json.loads(base64.b64decode(done["output"])) == {"steps_done": 3}

    request_id = interrupt.http.post("/generate", json={"num_inference_steps": 1000, "step_seconds": 0.01})
    request_id = request_id.json()["request_id"]
    interrupt.wait_running(request_id)
    response = interrupt.http.post("/cancel", json={"request_id": request_id})
    assert (response.status_code, response.json()["state"]) == (200, "cancelled")
    assert interrupt.restarts() == 0  # every rank left the pipe together
    with pytest.raises(urllib.error.HTTPError) as cancelled:
        urllib.request.urlopen(f"{interrupt.url}/get_output/{request_id}")
    assert cancelled.value.code == 404
    assert original_client(interrupt.url, {"num_inference_steps": 2})["file_type"] == "json"
