"""The web page (the ``webui`` plugin) in a real browser: Debian's chromium, headless,
driven by Playwright, against real servers (tiny Flux on 2 ranks; noop for long jobs).
The screenshots docs/webui-running.png (a job running, its preview shown) and
docs/webui-finished.png come from these tests.

Every wait is on a DOM state (Playwright's ``expect``), never a sleep. Screenshots go to
pytest's tmp path; with ``PARA_ATTN_WEBUI_SCREENSHOTS=DIR`` they are copied there too (that
is how docs/webui-*.png are made).
"""

from __future__ import annotations

import base64
import io
import json
import os
import re
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image
from playwright.sync_api import Browser, Page, Request, expect

from tests.browser import TIMEOUT_MS, chromium
from tests.conftest import Server

KEY = "webui-test-key"
# Fields of the server itself (where to write the output, where to post events, which served
# model runs it: a selector's, on a server of several): not on the form.
SERVER_FIELDS = {"output_path", "webhook", "webhook_events_filter", "model"}


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with chromium() as browser:
        yield browser


@pytest.fixture
def open_page(browser: Browser) -> Iterator[Callable[..., Page]]:
    """``open_page(server)``: a fresh browser context (empty session storage) on the page.
    Uncaught script errors fail the test."""
    contexts = []
    errors: list[str] = []

    def open_(server: Server) -> Page:
        context = browser.new_context(viewport={"width": 1280, "height": 900})
        contexts.append(context)
        page = context.new_page()
        page.set_default_timeout(TIMEOUT_MS)
        page.on("pageerror", lambda error: errors.append(str(error)))
        page.goto(server.url + "/")
        return page

    yield open_
    for context in contexts:
        context.close()
    assert not errors, f"uncaught errors in the page's script: {errors}"


@pytest.fixture(scope="module")
def noop_server(launch: Callable[..., Server]) -> Server:
    """noop on 2 ranks behind an API key: long jobs to cancel, and the key's flow."""
    server = launch("--model", "noop", "--num-devices", "2", "--api-key", KEY)
    server.http.headers["Authorization"] = f"Bearer {KEY}"
    return server


def enter_key(page: Page, key: str = KEY) -> None:
    page.get_by_label("This server needs an API key").fill(key)
    page.get_by_role("button", name="Use key").click()


def generate(page: Page, **fields: object) -> str:
    """Fill in the fields, press Generate, and return the id of the job the page shows."""
    for name, value in fields.items():
        page.locator(f"#field-{name}").fill(str(value))
    page.get_by_role("button", name="Generate").click()
    expect(page.locator("#job-id")).to_have_text(re.compile(r"^[0-9a-f-]{36}$"))
    return page.locator("#job-id").inner_text()


def expect_job_state(page: Page, server: Server, job_id: str, state: str) -> None:
    """The page shows the job in ``state``; if not, the failure says what the server says."""
    try:
        expect(page.locator("#job-state")).to_have_text(state)
    except AssertionError as error:
        view = server.http.get(f"/v1/jobs/{job_id}").json()
        shown = page.locator("#page-error").text_content() or ""
        raise AssertionError(
            f"{error}\npage error: {shown!r}\nthe server's view: {view}\n{server.log.tail()}"
        ) from None


def save_screenshot(page: Page, path: Path) -> None:
    page.screenshot(path=path, full_page=True)
    if copy_to := os.environ.get("PARA_ATTN_WEBUI_SCREENSHOTS"):
        shutil.copy(path, Path(copy_to) / path.name)


def as_text(value: object) -> str:
    """A JSON value as JavaScript's String() writes it (16.0 -> "16")."""
    return str(int(value)) if isinstance(value, float) and value.is_integer() else str(value)


def is_media(spec: dict[str, Any]) -> bool:
    """A picture or video field: a string marked with its kind, or a list of them (or null)."""
    for choice in [spec, *spec.get("anyOf", []), *spec.get("oneOf", [])]:
        each = choice.get("items", choice)
        if "contentMediaType" in each and each.get("format") in ("image", "mask", "video"):
            return True
    return False


def folded(spec: dict[str, Any]) -> dict[str, Any]:
    """A property's schema with an optional type (X or null) folded into X, as the page folds it."""
    choices = spec.get("oneOf") or spec.get("anyOf") or []
    rest = [choice for choice in choices if choice.get("type") != "null"]
    if len(rest) != 1 or len(rest) == len(choices):
        return spec
    return {**rest[0], **{key: value for key, value in spec.items() if key not in ("oneOf", "anyOf")}}


def input_type(name: str, spec: dict[str, Any]) -> str:
    """The form control a field should get, as the DOM's ``type`` names it."""
    if is_media(spec):
        return "file"
    if "enum" in spec:
        return "select-one"
    if spec.get("type") == "string":
        return "textarea" if "prompt" in name else "text"
    return {"integer": "number", "number": "number", "boolean": "checkbox"}.get(spec.get("type", ""), "textarea")


def offered(server: Server) -> list[str]:
    """The adapters the server offers ([] where /v1/loras is absent: a model that applies none)."""
    response = server.http.get("/v1/loras")
    return [item["name"] for item in response.json()["data"]] if response.status_code == 200 else []


def request_schema(server: Server) -> dict[str, Any]:
    document = server.http.get("/schema/openapi.json").json()
    ref = document["paths"]["/v1/jobs"]["post"]["requestBody"]["content"]["application/json"]["schema"]["$ref"]
    schema: dict[str, Any] = document["components"]["schemas"][ref.rsplit("/", 1)[1]]
    return schema


@pytest.mark.parametrize("which", ["tiny_server", "noop_server"])
def test_form_has_every_field_with_its_default_and_limits_prompt_first(
    request: pytest.FixtureRequest, open_page: Callable[..., Page], which: str
) -> None:
    server: Server = request.getfixturevalue(which)
    page = open_page(server)
    if which == "noop_server":
        enter_key(page)
    schema = request_schema(server)
    # tiny takes loras, but this server offers no adapters: the field is left off (see below).
    assert offered(server) == []
    names = [name for name in schema["properties"] if name not in SERVER_FIELDS | {"loras"}]
    expect(page.locator("#fields .field")).to_have_count(len(names))

    shown = page.locator("#fields :is(input, select, textarea)").evaluate_all("els => els.map(e => e.name)")
    assert sorted(shown) == sorted(names)
    if "prompt" in names:
        assert shown[0] == "prompt"
    for name in names:
        spec = folded(schema["properties"][name])
        field = page.get_by_label(re.compile(rf"^{name}( \(required\))?$"))
        hint = page.locator(f"#hint-{name}")
        default = spec.get("default")
        assert field.evaluate("input => input.type") == input_type(name, spec)
        if "enum" in spec:
            assert field.evaluate("select => select.selectedOptions[0].text") == default
            assert field.evaluate("select => [...select.options].map(o => o.text)") == spec["enum"]
            expect(hint).to_contain_text(", ".join(spec["enum"]))
        elif spec.get("type") == "boolean":
            assert field.is_checked() is default
        elif default is not None:
            expect(field).to_have_value(as_text(default))
        if default is not None:
            expect(hint).to_contain_text("default")
        for key in ("minimum", "maximum", "multipleOf", "maxLength"):
            if key in spec and spec[key] < 1e15:  # larger bounds are shown rounded
                expect(hint).to_contain_text(as_text(spec[key]))


def test_a_job_runs_to_its_image_with_progress_to_n_of_n(
    tiny_server: Server, open_page: Callable[..., Page], tmp_path: Path
) -> None:
    page = open_page(tiny_server)
    job_id = generate(page, prompt="a red square", width=48, num_inference_steps=3)

    output = page.locator("#result img#output")
    expect(output).to_be_visible()
    page.wait_for_function("() => document.querySelector('#output').complete")
    assert output.evaluate("img => img.naturalWidth") == 48
    assert output.evaluate("img => img.naturalHeight") == 32  # the default height
    expect(page.locator("#progress-text")).to_have_text("3 of 3")
    expect(page.locator("#job-state")).to_have_text("succeeded")
    expect(page.locator(f'#jobs-list tr[data-job-id="{job_id}"]')).to_contain_text("succeeded")
    assert tiny_server.http.get(f"/v1/jobs/{job_id}").json()["state"] == "succeeded"
    save_screenshot(page, tmp_path / "webui-finished.png")


def test_a_running_job_shows_its_live_preview(
    tiny_server: Server, open_page: Callable[..., Page], tmp_path: Path
) -> None:
    # 50 steps of 128 x 128: seconds per job on two CPU ranks, so it is still running when
    # its preview shows; the test checks that it was, and cancels it.
    page = open_page(tiny_server)
    job_id = generate(page, prompt="a red square", width=128, height=128, num_inference_steps=50, preview_every=1)

    preview = page.locator("#preview")
    expect(preview).to_be_visible()
    page.wait_for_function("() => document.querySelector('#preview').complete")
    assert preview.evaluate("img => [img.naturalWidth, img.naturalHeight]") == [128, 128]
    expect(page.locator("#preview-caption")).to_have_text(re.compile(r"^Preview after step [1-4]\d$"))  # >= 10
    expect(page.locator("#job-state")).to_have_text("running")
    save_screenshot(page, tmp_path / "webui-running.png")
    shown = int(page.locator("#preview-caption").inner_text().rsplit(" ", 1)[1])
    assert tiny_server.http.get(f"/v1/jobs/{job_id}").json()["state"] == "running"  # so it was at the screenshot
    assert 10 <= shown < 50

    page.get_by_role("button", name="Cancel").click()
    expect_job_state(page, tiny_server, job_id, "cancelled")
    expect(page.locator("#result-box")).to_be_hidden()


def test_a_400_shows_the_servers_message_next_to_the_field(
    tiny_server: Server, open_page: Callable[..., Page], tmp_path: Path
) -> None:
    page = open_page(tiny_server)
    expected = tiny_server.http.post("/v1/jobs", json={"prompt": "x", "width": 50})
    assert expected.status_code == 400
    assert expected.json()["field"] == "width"

    page.locator("#field-prompt").fill("x")
    page.locator("#field-width").fill("50")
    page.get_by_role("button", name="Generate").click()

    expect(page.locator("#error-width")).to_have_text(expected.json()["error"])
    expect(page.locator("#field-width")).to_have_attribute("aria-invalid", "true")
    expect(page.locator("#job-detail")).to_be_hidden()  # no job was made
    save_screenshot(page, tmp_path / "webui-field-error.png")

    page.locator("#field-width").fill("64")  # a good value clears the message
    page.get_by_role("button", name="Generate").click()
    expect(page.locator("#job-state")).to_have_text("succeeded")
    expect(page.locator("#error-width")).to_be_empty()


def test_cancel_stops_a_running_job(noop_server: Server, open_page: Callable[..., Page]) -> None:
    page = open_page(noop_server)
    enter_key(page)
    job_id = generate(page, steps=100_000, step_seconds=0.05)
    expect(page.locator("#progress-text")).to_have_text(re.compile(r"^[1-9]\d* of 100000$"))

    page.get_by_role("button", name="Cancel").click()

    expect_job_state(page, noop_server, job_id, "cancelled")
    expect(page.get_by_role("button", name="Cancel")).to_be_disabled()
    view = noop_server.http.get(f"/v1/jobs/{job_id}").json()
    assert view["state"] == "cancelled"
    assert view["step"] < 100_000


def test_with_an_api_key_the_page_asks_once_and_never_puts_it_in_a_url(
    noop_server: Server, open_page: Callable[..., Page], tmp_path: Path
) -> None:
    page = open_page(noop_server)
    urls: list[str] = []
    page.on("request", lambda request: urls.append(request.url))

    enter_key(page, "not-the-key")
    expect(page.locator("#key-error")).to_have_text("The server refused that key.")
    enter_key(page)
    expect(page.locator("#field-steps")).to_be_visible()
    assert page.evaluate("sessionStorage.getItem('para-attn-server.api-key')") == KEY

    page.reload()  # kept for the tab: no second question
    expect(page.locator("#field-steps")).to_be_visible()
    expect(page.locator("#key-panel")).to_be_hidden()
    job_id = generate(page, steps=3, size=100)

    expect(page.locator("#job-state")).to_have_text("succeeded")
    expect(page.locator("#progress-text")).to_have_text("3 of 3")
    expect(page.locator("#result-caption")).to_contain_text("100 bytes")  # the output, fetched with the key
    assert noop_server.http.get(f"/v1/jobs/{job_id}").json()["state"] == "succeeded"
    assert any(url.endswith(f"/v1/jobs/{job_id}/events") for url in urls)
    assert not [url for url in urls if KEY in url or "not-the-key" in url]


def test_the_servers_own_host_is_listed_with_its_group_busy_while_a_job_runs(
    noop_server: Server, open_page: Callable[..., Page]
) -> None:
    [host] = noop_server.status()["hosts"]
    name = host["name"]
    page = open_page(noop_server)
    enter_key(page)
    row = page.locator(f'#hosts-list tr[data-host="{name}"]')
    expect(row.locator(".host-state")).to_have_text("local")
    expect(row.locator(".host-devices")).to_have_text("2")
    expect(row.locator(".group")).to_have_text(["group 0: ready"])

    job_id = generate(page, steps=100_000, step_seconds=0.05)
    expect(row.locator(".group")).to_have_text(["group 0: busy"])  # refreshed while the page stays open
    runs = noop_server.status()["hosts"][0]["runs"]
    expect(row.locator(".host-runs")).to_have_text(str(runs))
    page.get_by_role("button", name="Cancel").click()
    expect_job_state(page, noop_server, job_id, "cancelled")
    expect(row.locator(".group")).to_have_text(["group 0: ready"])
    expect(page.locator("#hosts-note")).to_be_empty()


def test_the_page_files_load_without_the_key_and_the_api_does_not(noop_server: Server) -> None:
    for path in ("/", "/ui/app.js", "/ui/adapters.js", "/ui/hosts.js", "/ui/style.css"):
        assert httpx.get(noop_server.url + path).status_code == 200, path
    assert httpx.get(noop_server.url + "/ui/missing.js").status_code == 404
    for path in ("/schema/openapi.json", "/v1/jobs/x", "/server_status"):
        assert httpx.get(noop_server.url + path).status_code == 401, path


# ---- pictures: the file picker, drop and paste, "Use as input" ------------------------------


def png(size: tuple[int, int], colour: tuple[int, int, int] = (220, 40, 40)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, format="PNG")
    return buffer.getvalue()


def submitted_bodies(page: Page) -> list[dict[str, Any]]:
    """The JSON bodies the page posts to /v1/jobs, as they are sent (filled in as it sends them)."""
    bodies: list[dict[str, Any]] = []

    def seen(request: Request) -> None:
        if request.method == "POST" and request.url.endswith("/v1/jobs"):
            bodies.append(json.loads(request.post_data or "{}"))

    page.on("request", seen)
    return bodies


def generate_next(page: Page, shown: str, **fields: object) -> str:
    """``generate`` while job ``shown`` is on the page: the id of the new job, once shown."""
    for name, value in fields.items():
        page.locator(f"#field-{name}").fill(str(value))
    page.get_by_role("button", name="Generate").click()
    expect(page.locator("#job-id")).not_to_have_text(shown)
    return page.locator("#job-id").inner_text()


def thumbnail_size(page: Page, name: str) -> list[int]:
    thumb = page.locator(f"#thumbs-{name} img")
    expect(thumb).to_have_count(1)
    page.wait_for_function(f"() => document.querySelector('#thumbs-{name} img').complete")
    size: list[int] = thumb.evaluate("img => [img.naturalWidth, img.naturalHeight]")
    return size


def test_a_picked_picture_is_shown_and_sent_as_a_data_url(
    tiny_server: Server, open_page: Callable[..., Page], tmp_path: Path
) -> None:
    picture = png((48, 32))
    (tmp_path / "cat.png").write_bytes(picture)
    page = open_page(tiny_server)
    bodies = submitted_bodies(page)
    expect(page.locator("#field-image")).to_have_attribute("type", "file")

    page.locator("#field-image").set_input_files(tmp_path / "cat.png")
    assert thumbnail_size(page, "image") == [48, 32]
    expect(page.locator("#thumbs-image figcaption")).to_have_text("cat.png")
    job_id = generate(page, prompt="a red square", width=48, height=32, strength=0.5, num_inference_steps=2)

    expect_job_state(page, tiny_server, job_id, "succeeded")
    assert bodies[-1]["image"] == "data:image/png;base64," + base64.b64encode(picture).decode()
    assert bodies[-1]["strength"] == 0.5
    output = page.locator("#result img#output")
    page.wait_for_function("() => document.querySelector('#output')?.complete")
    assert output.evaluate("img => [img.naturalWidth, img.naturalHeight]") == [48, 32]
    save_screenshot(page, tmp_path / "webui-picture.png")

    page.get_by_role("button", name="Clear image").click()  # cleared: the next job has no picture
    expect(page.locator("#thumbs-image img")).to_have_count(0)
    expect_job_state(page, tiny_server, generate_next(page, job_id), "succeeded")
    assert "image" not in bodies[-1]


def test_use_as_input_puts_the_finished_job_in_the_picture_field(
    tiny_server: Server, open_page: Callable[..., Page], tmp_path: Path
) -> None:
    page = open_page(tiny_server)
    bodies = submitted_bodies(page)
    first = generate(page, prompt="a red square", width=64, height=48, num_inference_steps=2)
    expect_job_state(page, tiny_server, first, "succeeded")

    page.get_by_role("button", name="Use as input").click()
    assert thumbnail_size(page, "image") == [64, 48]  # the output, fetched with the job
    expect(page.locator("#thumbs-image figcaption")).to_have_text(f"job {first[:8]}")
    second = generate_next(page, first, prompt="a blue square")

    expect_job_state(page, tiny_server, second, "succeeded")
    assert bodies[-1]["image"] == f"job:{first}"
    save_screenshot(page, tmp_path / "webui-use-as-input.png")


def test_a_dropped_or_pasted_picture_fills_the_field(tiny_server: Server, open_page: Callable[..., Page]) -> None:
    page = open_page(tiny_server)
    expect(page.locator("#zone-image")).to_be_visible()
    give = """([kind, data]) => {
        const bytes = Uint8Array.from(atob(data), (c) => c.charCodeAt(0));
        const transfer = new DataTransfer();
        transfer.items.add(new File([bytes], `${kind}.png`, { type: "image/png" }));
        const zone = document.querySelector("#zone-image");
        if (kind === "pasted") zone.focus(); // as a click on the field before Ctrl+V: it takes the paste
        const event = kind === "dropped"
          ? new DragEvent("drop", { dataTransfer: transfer, bubbles: true, cancelable: true })
          : new ClipboardEvent("paste", { clipboardData: transfer, bubbles: true, cancelable: true });
        zone.dispatchEvent(event);
    }"""
    page.evaluate(give, ["dropped", base64.b64encode(png((16, 32))).decode()])
    assert thumbnail_size(page, "image") == [16, 32]
    expect(page.locator("#thumbs-image figcaption")).to_have_text("dropped.png")

    page.evaluate(give, ["pasted", base64.b64encode(png((32, 16))).decode()])  # replaces it: one picture
    expect(page.locator("#thumbs-image figcaption")).to_have_text("pasted.png")
    assert thumbnail_size(page, "image") == [32, 16]


def test_a_file_that_is_no_picture_is_a_400_under_its_field(
    tiny_server: Server, open_page: Callable[..., Page], tmp_path: Path
) -> None:
    (tmp_path / "notes.png").write_bytes(b"not a picture at all")
    page = open_page(tiny_server)
    page.locator("#field-image").set_input_files(tmp_path / "notes.png")
    expect(page.locator("#thumbs-image figcaption")).to_have_text("notes.png")
    page.locator("#field-prompt").fill("x")
    page.get_by_role("button", name="Generate").click()

    expect(page.locator("#error-image")).not_to_be_empty()
    expect(page.locator("#field-image")).to_have_attribute("aria-invalid", "true")
    expect(page.locator("#job-detail")).to_be_hidden()


# ---- adapters (LoRA) -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def lora_server(launch: Callable[..., Server], tmp_path_factory: pytest.TempPathFactory) -> Server:
    """tiny on 2 ranks offering two adapters (rank-4 LoRAs of its transformer)."""
    from tests.contrib.support import make_lora  # torch and diffusers, for this fixture only

    root = tmp_path_factory.mktemp("loras")
    a, b = make_lora(root / "a", seed=1), make_lora(root / "b", seed=2)
    return launch("--model", "tiny", "--num-devices", "2", "--lora", f"a={a}", "--lora", f"b={b}")


def test_the_offered_adapters_are_a_field_and_a_chosen_one_is_applied(
    lora_server: Server, open_page: Callable[..., Page], tmp_path: Path
) -> None:
    page = open_page(lora_server)
    bodies = submitted_bodies(page)
    expect(page.locator("#field-loras legend")).to_have_text("loras")
    assert page.locator("#field-loras input[type=checkbox]").evaluate_all("els => els.map(e => e.value)") == ["a", "b"]
    expect(page.get_by_label("scale of b")).to_have_value("1")

    page.get_by_label("a", exact=True).check()
    page.get_by_label("scale of a").fill("0.8")
    adapted = generate(page, prompt="a red cat", width=32, height=32, num_inference_steps=2, seed=3)
    expect_job_state(page, lora_server, adapted, "succeeded")
    assert bodies[-1]["loras"] == [{"name": "a", "scale": 0.8}]
    assert lora_server.http.get(f"/v1/jobs/{adapted}").json()["loras"] == [{"name": "a", "scale": 0.8}]
    expect(page.locator("#job-loras")).to_have_text("Adapters: a × 0.8")
    save_screenshot(page, tmp_path / "webui-adapters.png")

    page.get_by_label("a", exact=True).uncheck()  # the same request, on the base model
    base = generate_next(page, adapted)
    expect_job_state(page, lora_server, base, "succeeded")
    assert "loras" not in bodies[-1]
    assert "loras" not in lora_server.http.get(f"/v1/jobs/{base}").json()
    expect(page.locator("#job-loras")).to_be_hidden()
    assert lora_server.output(adapted) != lora_server.output(base)


def test_a_400_about_an_adapter_shows_under_the_field(lora_server: Server, open_page: Callable[..., Page]) -> None:
    expected = lora_server.http.post("/v1/jobs", json={"prompt": "x", "loras": [{"name": "b", "scale": 11}]})
    assert expected.status_code == 400  # above the scale's limit, 10
    assert expected.json()["field"].split("[")[0] == "loras"
    page = open_page(lora_server)
    page.get_by_label("b", exact=True).check()
    page.get_by_label("scale of b").fill("11")
    page.locator("#field-prompt").fill("x")
    page.get_by_role("button", name="Generate").click()

    expect(page.locator("#error-loras")).to_have_text(expected.json()["error"])
    expect(page.locator("#field-loras")).to_have_attribute("aria-invalid", "true")
    expect(page.locator("#job-detail")).to_be_hidden()


def test_without_adapters_offered_the_form_has_no_adapters_field(
    tiny_server: Server, open_page: Callable[..., Page]
) -> None:
    assert "loras" in request_schema(tiny_server)["properties"]
    assert tiny_server.http.get("/v1/loras").json()["data"] == []  # the route is there, and lists none
    page = open_page(tiny_server)
    bodies = submitted_bodies(page)
    expect_job_state(page, tiny_server, generate(page, prompt="a red square", num_inference_steps=1), "succeeded")

    expect(page.locator("#field-loras")).to_have_count(0)
    assert "loras" not in bodies[-1]
