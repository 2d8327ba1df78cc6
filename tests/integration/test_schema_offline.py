"""/schema in a real browser with no internet: Debian's chromium, headless, driven by
Playwright, against the shared tiny server; every request that is not to the server is
refused (and recorded), so the page renders only from what the server itself serves.

Every wait is on a DOM state (Playwright's ``expect``), never a sleep.
"""

from __future__ import annotations

from collections.abc import Iterator
from urllib.parse import urlsplit

import pytest
from playwright.sync_api import Browser, Page, Response, Route, expect

from tests.browser import TIMEOUT_MS, chromium
from tests.conftest import Server

METHODS = {"get", "put", "post", "delete", "patch", "head", "options", "trace"}


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with chromium() as browser:
        yield browser


class Offline:
    """A page whose every request off the server's host is aborted; what it asked for is kept."""

    def __init__(self, browser: Browser) -> None:
        self.context = browser.new_context(viewport={"width": 1280, "height": 900})
        self.page: Page = self.context.new_page()
        self.page.set_default_timeout(TIMEOUT_MS)
        self.refused: list[str] = []
        self.failed: list[str] = []
        self.errors: list[str] = []
        self.page.route("**/*", self._route)
        self.page.on("response", self._response)
        self.page.on("pageerror", lambda error: self.errors.append(str(error)))

    def _route(self, route: Route) -> None:
        if urlsplit(route.request.url).hostname == "127.0.0.1":
            route.continue_()
        else:
            self.refused.append(route.request.url)
            route.abort("internetdisconnected")

    def _response(self, response: Response) -> None:
        if response.status != 200:
            self.failed.append(f"{response.status} {response.url}")


@pytest.fixture
def offline(browser: Browser) -> Iterator[Offline]:
    opened = Offline(browser)
    yield opened
    opened.context.close()


def operations(server: Server) -> int:
    document = server.http.get("/schema/openapi.json").json()
    return sum(1 for item in document["paths"].values() for method in item if method in METHODS)


def test_schema_renders_every_operation_with_the_network_blocked(offline: Offline, tiny_server: Server) -> None:
    page = offline.page
    page.goto(tiny_server.url + "/schema")
    expect(page.get_by_role("heading", name="para-attn-server")).to_be_visible()
    expect(page.get_by_text("Readiness: a worker group can take jobs", exact=False)).to_be_visible()
    # Every operation of the document is on the page, not only the first few.
    expect(page.locator(".opblock")).to_have_count(operations(tiny_server))

    # The request schema is the predictor's own: open "POST /v1/jobs" and find its fields.
    submit = page.locator(".opblock-post").filter(has=page.locator(".opblock-summary-path", has_text="/v1/jobs"))
    submit.first.locator(".opblock-summary").click()
    expect(submit.first.get_by_text('"num_inference_steps"', exact=False).first).to_be_visible()

    assert offline.refused == [], f"the page asked the internet for {offline.refused}"
    assert offline.failed == [], f"requests to the server failed: {offline.failed}"
    assert offline.errors == [], f"uncaught errors in the page's script: {offline.errors}"


def test_schema_swagger_is_the_same_page(tiny_server: Server) -> None:
    root, swagger = (tiny_server.http.get(path) for path in ("/schema", "/schema/swagger"))
    assert root.status_code == swagger.status_code == 200
    assert root.text == swagger.text
