"""Previews while denoising, end to end: tiny Flux on 2 real ranks over real HTTP.

Each job under test is watched from before it starts: a long job holds the group while the
test subscribes to the watched job's events (its first event says "queued"), then is
cancelled, so no event of the watched job can be missed.
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import pytest
from PIL import Image

from tests.conftest import Server

pytestmark = pytest.mark.timeout(240)

JOB = {"prompt": "a red square", "width": 64, "height": 48, "num_inference_steps": 4, "seed": 5}


def watch(server: Server, **fields: Any) -> tuple[str, list[tuple[str, dict[str, Any]]]]:
    """Submit a job and return its id and every event it published, from "queued" on."""
    blocker = server.submit(prompt="hold the group", width=128, height=128, num_inference_steps=50)
    server.wait_running(blocker)
    job_id = server.submit(**fields)
    stream = server.events(job_id)
    first = next(stream)  # sent once the server holds this subscription
    assert first[0] == "state"
    assert first[1]["state"] == "queued", "the group was free before the test subscribed"
    assert server.http.post(f"/v1/jobs/{blocker}/cancel").status_code == 200
    return job_id, [first, *stream]


def of_kind(events: list[tuple[str, dict[str, Any]]], kind: str) -> list[dict[str, Any]]:
    return [data for event, data in events if event == kind]


def mean_colour(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"), dtype=float).reshape(-1, 3).mean(axis=0) / 255


def test_previews_follow_the_steps_and_the_last_looks_like_the_image(tiny_server: Server) -> None:
    steps = JOB["num_inference_steps"]
    job_id, events = watch(tiny_server, **JOB, preview_every=1)

    previews = of_kind(events, "preview")
    shown = [data["step"] for data in previews]
    assert [data["step"] for data in of_kind(events, "progress")] == list(range(1, steps + 1))
    assert of_kind(events, "state")[-1]["state"] == "succeeded"
    assert {data["url"] for data in previews} == {f"/v1/jobs/{job_id}/preview"}
    # In step order, and always the last step's: rank 0 sends a job's previews before its end.
    # Under load the sender drops a preview that a newer one replaced while it waited, so
    # not every step's is required.
    assert shown == sorted(set(shown))
    assert shown[-1] == steps
    assert len(shown) >= steps // 2
    # Every preview event follows its step's progress event.
    order = [(event, data["step"]) for event, data in events if event in ("progress", "preview")]
    for step in shown:
        assert order.index(("progress", step)) < order.index(("preview", step))

    response = tiny_server.http.get(f"/v1/jobs/{job_id}/preview")
    assert response.status_code == 200
    assert response.headers["content-type"] == "image/jpeg"
    assert response.headers["x-preview-step"] == str(steps)
    preview = Image.open(io.BytesIO(response.content))
    assert preview.format == "JPEG"
    assert preview.size == (64, 48)  # tiny's VAE keeps the size; at most 256 on the long side
    final = Image.open(io.BytesIO(tiny_server.output(job_id)))
    # The projection was fitted to this pipeline's VAE: the last preview's mean colour is
    # near the image's, far nearer than a flat grey (or noise, whose mean is grey) would be.
    truth = mean_colour(final)
    distance, grey = np.linalg.norm(mean_colour(preview) - truth), np.linalg.norm(0.5 - truth)
    assert grey > 0.05
    assert distance < grey / 3, (mean_colour(preview), truth)


def test_previews_come_every_nth_step_only(tiny_server: Server) -> None:
    _, events = watch(tiny_server, **{**JOB, "num_inference_steps": 6}, preview_every=3)

    shown = [data["step"] for data in of_kind(events, "preview")]
    assert set(shown) <= {3, 6}
    assert shown[-1] == 6


def test_previews_are_off_by_default(tiny_server: Server) -> None:
    job_id, events = watch(tiny_server, **JOB)

    assert [data["step"] for data in of_kind(events, "progress")] == [1, 2, 3, 4]  # the whole job was seen
    assert of_kind(events, "preview") == []
    response = tiny_server.http.get(f"/v1/jobs/{job_id}/preview")
    assert response.status_code == 404
    assert response.json() == {"error": "the job has no preview (yet)"}


def test_preview_every_is_validated(tiny_server: Server) -> None:
    response = tiny_server.http.post("/v1/jobs", json={**JOB, "preview_every": -1})

    assert response.status_code == 400
    assert response.json()["field"] == "preview_every"


def test_the_request_schema_documents_preview_every(tiny_server: Server) -> None:
    document = tiny_server.http.get("/schema/openapi.json").json()
    ref = document["paths"]["/v1/jobs"]["post"]["requestBody"]["content"]["application/json"]["schema"]["$ref"]
    field = document["components"]["schemas"][ref.rsplit("/", 1)[1]]["properties"]["preview_every"]

    assert field["default"] == 0
    assert field["minimum"] == 0
    assert "preview" in field["description"]
