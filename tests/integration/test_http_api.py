"""Every endpoint of both HTTP faces, against the default model (real tiny Flux, 2 ranks)."""

from __future__ import annotations

import io
import uuid

import pytest
from PIL import Image

from para_attn_server.testing import Server, b64decode
from tests.integration.support import metric, png_size

pytestmark = pytest.mark.timeout(180)


def test_generate_then_get_output_returns_base64_png(tiny_server: Server) -> None:
    response = tiny_server.http.post("/generate", json={"prompt": "a cat", "width": 48, "height": 32})
    assert response.status_code == 202
    request_id = response.json()["request_id"]
    assert uuid.UUID(request_id).version == 4
    tiny_server.wait(request_id)

    bodies = [
        tiny_server.http.get(f"/get_output/{request_id}"),
        tiny_server.http.post(f"/get_output/{request_id}"),
        tiny_server.http.post(f"/request_status/{request_id}"),
    ]
    for body in bodies:
        assert body.status_code == 200
        assert body.json()["file_type"] == "png"
        assert png_size(b64decode(body.json()["output"])) == (48, 32)
    assert bodies[0].json() == bodies[1].json() == bodies[2].json()


@pytest.mark.parametrize(
    ("method", "path"),
    [("GET", "/get_output/{}"), ("POST", "/get_output/{}"), ("POST", "/request_status/{}"),
     ("GET", "/v1/jobs/{}"), ("GET", "/v1/jobs/{}/output"), ("GET", "/v1/jobs/{}/events"),
     ("POST", "/v1/jobs/{}/cancel"), ("POST", "/cancel/{}")],
)  # fmt: skip
def test_unknown_request_id_is_404(tiny_server: Server, method: str, path: str) -> None:
    unknown = str(uuid.uuid4())
    response = tiny_server.http.request(method, path.format(unknown))
    assert response.status_code == 404
    assert unknown not in response.text


def test_cancel_with_unknown_id_in_body_or_nothing_running_is_404(tiny_server: Server) -> None:
    assert tiny_server.http.post("/cancel", json={"request_id": str(uuid.uuid4())}).status_code == 404
    assert tiny_server.http.post("/cancel").status_code == 404  # nothing is running


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"prompt": "x", "colour": "red"}, "colour"),  # unknown
        ({"width": 32}, "prompt"),  # missing
        ({"prompt": "x", "width": "wide"}, "width"),  # ill-typed
        ({"prompt": "x", "num_inference_steps": 0}, "num_inference_steps"),  # below the minimum
        ({"prompt": "x", "num_inference_steps": 51}, "num_inference_steps"),  # above the maximum
        ({"prompt": "x", "height": 40}, "height"),  # not a multiple of 16
        ({"prompt": "x", "output_format": "gif"}, "output_format"),  # not one of the choices
        ({"prompt": "x", "output_path": "../x.png"}, "output_path"),
    ],
)
@pytest.mark.parametrize("path", ["/generate", "/v1/jobs"])
def test_invalid_field_is_400_naming_the_field(
    tiny_server: Server, path: str, body: dict[str, object], field: str
) -> None:
    submitted = metric(tiny_server, "para_attn_jobs_submitted_total")
    response = tiny_server.http.post(path, json=body)
    assert response.status_code == 400
    assert field in response.json()["error"]
    assert metric(tiny_server, "para_attn_jobs_submitted_total") == submitted


def test_body_that_is_not_a_json_object_is_400(tiny_server: Server) -> None:
    assert tiny_server.http.post("/generate", content=b"{not json").status_code == 400
    assert tiny_server.http.post("/generate", json=["prompt"]).status_code == 400


def test_create_job_is_201_with_location_and_waits_when_asked(tiny_server: Server) -> None:
    response = tiny_server.http.post("/v1/jobs", params={"wait": 60}, json={"prompt": "a dog"})
    assert response.status_code == 201
    job = response.json()
    assert response.headers["location"] == f"/v1/jobs/{job['id']}"
    assert job["state"] == "succeeded"
    assert job["step"] == job["total"] == job["total_steps"] == 4  # total_steps: the old name, kept
    assert job["output_url"] == f"/v1/jobs/{job['id']}/output"
    assert tiny_server.http.get(response.headers["location"]).json() == job


def test_job_output_is_the_binary_file_with_its_content_type(tiny_server: Server) -> None:
    job = tiny_server.run(prompt="a bird", width=64, height=16)
    response = tiny_server.http.get(job["output_url"])
    assert response.status_code == 200
    assert response.headers["content-type"] == "image/png"
    assert png_size(response.content) == (64, 16)

    jpeg = tiny_server.run(prompt="a bird", output_format="jpeg")
    response = tiny_server.http.get(jpeg["output_url"])
    assert response.headers["content-type"] == "image/jpeg"
    assert Image.open(io.BytesIO(response.content)).format == "JPEG"


def test_put_with_the_same_id_is_idempotent(tiny_server: Server) -> None:
    job_id = str(uuid.uuid4())
    first = tiny_server.http.put(f"/v1/jobs/{job_id}", json={"prompt": "same", "seed": 3})
    assert first.status_code == 201
    assert first.json()["id"] == job_id
    again = tiny_server.http.put(f"/v1/jobs/{job_id}", params={"wait": 60}, json={"prompt": "same", "seed": 3})
    assert again.status_code == 200
    assert again.json()["id"] == job_id
    assert again.json()["created_at"] == first.json()["created_at"]

    conflict = tiny_server.http.put(f"/v1/jobs/{job_id}", json={"prompt": "other", "seed": 3})
    assert conflict.status_code == 409
    assert tiny_server.http.put("/v1/jobs/not-a-uuid", json={"prompt": "x"}).status_code == 400


def test_events_stream_each_step_then_the_final_state(tiny_server: Server) -> None:
    # A longer job ahead keeps this one queued while the stream opens, so no step of it
    # can pass unseen (a stream opened later starts from the job's current step).
    ahead = tiny_server.submit(prompt="ahead", width=128, height=128, num_inference_steps=30)
    job_id = tiny_server.submit(prompt="steps", num_inference_steps=6)
    events = list(tiny_server.events(job_id))
    assert (events[0][0], events[0][1]["state"]) == ("state", "queued"), "the job ahead ended before the stream opened"
    steps = [(data["step"], data["total"]) for event, data in events if event == "progress"]
    assert steps == [(k, 6) for k in range(1, 7)]
    states = [data["state"] for event, data in events if event == "state"]
    assert states[-1] == "succeeded"
    assert set(states) <= {"queued", "running", "succeeded"}
    assert tiny_server.wait(ahead)["state"] == "succeeded"


def test_health_probes(tiny_server: Server) -> None:
    assert tiny_server.http.get("/health/live").json() == {"status": "live"}
    ready = tiny_server.http.get("/health/ready")
    assert ready.status_code == 200
    assert ready.json() == {"status": "ready"}


def test_metrics_count_submitted_and_finished_jobs(tiny_server: Server) -> None:
    submitted = metric(tiny_server, "para_attn_jobs_submitted_total")
    succeeded = metric(tiny_server, "para_attn_jobs_finished_total", state="succeeded")
    tiny_server.run(prompt="counted")
    assert metric(tiny_server, "para_attn_jobs_submitted_total") == submitted + 1
    assert metric(tiny_server, "para_attn_jobs_finished_total", state="succeeded") == succeeded + 1
    assert metric(tiny_server, "para_attn_group_ready", group="0") == 1


def test_server_status_shows_every_rank(tiny_server: Server) -> None:
    for response in (tiny_server.http.get("/server_status"), tiny_server.http.post("/server_status")):
        assert response.status_code == 200
        status = response.json()
        assert status["ready"] is True
        assert [row["rank"] for row in status["ranks"]] == [0, 1]
        assert {row["state"] for row in status["ranks"]} == {"ready"}
        pids = [row["pid"] for row in status["ranks"]]
        assert len(set(pids)) == 2
        assert tiny_server.process.pid not in pids


def test_openapi_schema_lists_the_predictors_fields_and_limits(tiny_server: Server) -> None:
    schema = tiny_server.http.get("/schema/openapi.json").json()
    body = schema["components"]["schemas"]["TinyFluxPredictorInput"]
    fields = body["properties"]
    assert body["required"] == ["prompt"]
    assert fields["prompt"]["type"] == "string"
    assert (fields["width"]["minimum"], fields["width"]["maximum"], fields["width"]["multipleOf"]) == (16, 256, 16)
    assert fields["height"]["default"] == 32
    assert (fields["num_inference_steps"]["minimum"], fields["num_inference_steps"]["maximum"]) == (1, 50)
    assert fields["output_format"]["enum"] == ["png", "jpeg", "webp", "npy"]
    assert "output_path" in fields
    generate = schema["paths"]["/generate"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert generate["$ref"].endswith("/TinyFluxPredictorInput")
