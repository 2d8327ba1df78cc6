"""One server of two models, tiny and noop (one rank each, from a ``--config`` file's
``[[models]]`` tables), shared by every test here: a job runs on the model its ``model``
field names, on the first without one; the original ``/generate`` runs the first; an
unknown name is a 400 listing both; each model has its schema, its ``/v1/models`` entry
(the openai plugin), its metrics; and the web page's selector switches the form to noop
and submits a noop job, in a real browser (Debian's chromium, as tests/integration/test_webui.py).
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Page, Request, expect

from tests.browser import TIMEOUT_MS, chromium
from tests.conftest import Server
from tests.integration.support import png_size, scrape

CONFIG = """
[[models]]
name = "tiny"
model = "tiny"

[[models]]
name = "noop"
model = "noop"
"""
JOB_ID = re.compile(r"^[0-9a-f-]{36}$")


@pytest.fixture(scope="module")
def server(launch: Callable[..., Server], tmp_path_factory: pytest.TempPathFactory) -> Server:
    config = tmp_path_factory.mktemp("config") / "server.toml"
    config.write_text(CONFIG)
    return launch("--config", str(config))


def group_of(server: Server, model: str) -> int:
    """The one worker group that runs ``model``'s jobs, as /server_status says."""
    groups = [group["group"] for group in server.status()["groups"] if group["model"] == model]
    assert len(groups) == 1, server.status()["groups"]
    return int(groups[0])


def ran_on(server: Server, job_id: str) -> int:
    """The group that ran the job (``GET /v1/jobs/{id}``), once it succeeded."""
    server.wait(job_id)
    view = server.http.get(f"/v1/jobs/{job_id}").json()
    assert view["state"] == "succeeded", view
    return int(view["group"])


def test_a_job_runs_on_the_model_it_names_and_on_the_first_without_one(server: Server) -> None:
    noop = server.submit(model="noop", size=16)
    tiny = server.submit(prompt="a red square", num_inference_steps=1)
    generated = server.http.post("/generate", json={"prompt": "a blue square", "num_inference_steps": 1})
    assert generated.status_code == 202, generated.text

    assert ran_on(server, noop) == group_of(server, "noop")
    assert len(server.output(noop)) == 16
    assert ran_on(server, tiny) == group_of(server, "tiny")
    assert ran_on(server, generated.json()["request_id"]) == group_of(server, "tiny")
    # The original endpoint checks its body against the first model's schema: noop's field is unknown there.
    refused = server.http.post("/generate", json={"size": 16})
    assert refused.status_code == 400
    assert "size" in refused.text


def test_an_unknown_model_is_a_400_naming_model_and_listing_both(server: Server) -> None:
    response = server.http.post("/v1/jobs", json={"model": "flux", "prompt": "a cat"})

    assert response.status_code == 400
    body = response.json()
    assert body["field"] == "model"
    assert "'tiny', 'noop'" in body["error"]
    assert server.http.get("/v1/models/flux/schema").json()["field"] == "model"


def test_each_model_has_its_own_schema(server: Server) -> None:
    tiny, noop = (server.http.get(f"/v1/models/{name}/schema").json() for name in ("tiny", "noop"))

    def fields(schema: dict[str, Any]) -> set[str]:
        return set(schema["$defs"][schema["$ref"].rsplit("/", 1)[1]]["properties"])

    assert (tiny["x-model"], tiny["x-default"], noop["x-model"], noop["x-default"]) == ("tiny", True, "noop", False)
    assert {"prompt", "num_inference_steps"} <= fields(tiny)
    assert {"size", "steps"} <= fields(noop)
    assert "size" not in fields(tiny)
    assert "prompt" not in fields(noop)


def test_the_openai_api_lists_both_and_its_model_field_chooses_one(server: Server) -> None:
    listed = server.http.get("/v1/models").json()["data"]
    assert [model["id"] for model in listed] == ["tiny", "noop"]
    assert server.http.get("/v1/models/noop").json()["id"] == "noop"

    image = server.http.post("/v1/images/generations", json={"prompt": "a cat", "model": "tiny", "size": "16x32"})
    assert image.status_code == 200, image.text
    assert png_size(base64.b64decode(image.json()["data"][0]["b64_json"])) == (16, 32)
    promptless = server.http.post("/v1/images/generations", json={"prompt": "a cat", "model": "noop"})
    assert promptless.status_code == 404
    assert "the served model (noop) takes no prompt" in promptless.json()["error"]["message"]
    unknown = server.http.post("/v1/images/generations", json={"prompt": "a cat", "model": "dall-e-3"})
    assert unknown.status_code == 400
    assert unknown.json()["error"]["param"] == "model"
    assert "'tiny', 'noop'" in unknown.json()["error"]["message"]


def test_metrics_count_each_models_jobs_and_label_each_group_with_its_model(server: Server) -> None:
    before = scrape(server)
    server.wait(server.submit(model="noop"))
    after = scrape(server)

    def delta(name: str, **labels: str) -> float:
        return after.value(name, **labels) - before.value(name, **labels)

    assert delta("para_attn_model_jobs_submitted_total", model="noop") == 1
    assert delta("para_attn_model_jobs_finished_total", model="noop", state="succeeded") == 1
    assert delta("para_attn_model_jobs_submitted_total", model="tiny") == 0
    assert after.value("para_attn_model_queue_length", model="tiny") == 0
    for model in ("tiny", "noop"):
        assert after.value("para_attn_group_ready", model=model, group=str(group_of(server, model))) == 1


# ---- the web page ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def page(server: Server) -> Iterator[Page]:
    """The page on the shared server in headless chromium; uncaught script errors fail the test."""
    errors: list[str] = []
    with chromium() as browser:
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.set_default_timeout(TIMEOUT_MS)
        page.on("pageerror", lambda error: errors.append(str(error)))
        page.goto(server.url + "/")
        yield page
    assert not errors, f"uncaught errors in the page's script: {errors}"


def generate(page: Page) -> tuple[str, dict[str, Any]]:
    """Press Generate: the id of the job the page shows, and the body it sent."""
    with page.expect_request(lambda request: request.method == "POST" and request.url.endswith("/v1/jobs")) as sent:
        page.get_by_role("button", name="Generate").click()
    expect(page.locator("#job-id")).to_have_text(JOB_ID)
    request: Request = sent.value
    return page.locator("#job-id").inner_text(), json.loads(request.post_data or "{}")


def test_the_page_selector_switches_the_form_to_noop_and_submits_noop_jobs(
    server: Server, page: Page, tmp_path: Path
) -> None:
    select = page.locator("#model-select")
    expect(select).to_be_visible()
    expect(select.locator("option")).to_have_text(["tiny", "noop"])
    expect(page.locator("#field-prompt")).to_be_visible()  # the first model's form
    expect(page.locator("#field-model")).to_have_count(0)  # the selector names the model

    select.select_option("noop")
    expect(page.locator("#field-size")).to_be_visible()
    expect(page.locator("#field-prompt")).to_have_count(0)
    page.locator("#field-size").fill("16")
    job_id, body = generate(page)
    expect(page.locator("#job-state")).to_have_text("succeeded")
    assert (body["model"], body["size"], "prompt" in body) == ("noop", 16, False)
    assert server.http.get(f"/v1/jobs/{job_id}").json()["group"] == group_of(server, "noop")
    groups = sorted((group_of(server, name), name) for name in ("tiny", "noop"))
    expect(page.locator("#hosts-list .group")).to_have_text(
        [re.compile(rf"^group {index} \({name}\): ") for index, name in groups]
    )

    select.select_option("tiny")  # back: the first's form, and its jobs name no model
    page.locator("#field-prompt").fill("a red square")
    page.locator("#field-num_inference_steps").fill("1")
    job_id, body = generate(page)
    expect(page.locator("#job-state")).to_have_text("succeeded")
    assert "model" not in body
    assert body["prompt"] == "a red square"
    assert server.http.get(f"/v1/jobs/{job_id}").json()["group"] == group_of(server, "tiny")
    page.screenshot(path=tmp_path / "webui-models.png", full_page=True)
