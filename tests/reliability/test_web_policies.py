"""Web policies: what other web sites, and outputs on the server's own origin, cannot do.

A server without an API key (the default) is reachable by every page a local browser opens.
These tests play such pages, with httpx and with a real chromium: a ``text/plain`` body, a
foreign ``Host`` (DNS rebinding: chromium's resolver is pointed at loopback), a cross-site
``POST /cancel``. Then outputs of active types (HTML, SVG, JavaScript) served from the
server's origin, ``response_format=url`` answers built from the client's ``Host``, and the
memory four stalled readers of a large base64 answer hold.
"""

from __future__ import annotations

import contextlib
import http.server
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Annotated, Any

import httpx
import msgspec
import pytest
import requests
from PIL import Image

from para_attn_server import Output, Predictor, RankContext, current_job
from para_attn_server.testing import Server, server_env
from tests.reliability.support import Report, stalled_readers, status_bytes

pytestmark = pytest.mark.timeout(240)

MODEL = "tests.reliability.test_web_policies:ActiveOutput"
FOREIGN = "rebind.test"  # a name chromium is told resolves to 127.0.0.1
EVIL_ORIGIN = "http://evil.example"
SANDBOX = "sandbox"


class ActiveOutput(Predictor):
    """``text`` back as a file of type ``file_type``, after ``steps`` step boundaries
    ``step_seconds`` apart (a job to cancel while it runs)."""

    def setup(self, context: RankContext) -> None:
        self.rank = context.rank

    def predict(
        self,
        prompt: str = "",
        text: str = "output",
        file_type: str = "png",
        steps: Annotated[int, msgspec.Meta(ge=0, le=10_000)] = 0,
        step_seconds: Annotated[float, msgspec.Meta(ge=0, le=1)] = 0.0,
        picture: bool = False,
    ) -> Output | None:
        job = current_job()
        for step in range(1, steps + 1):
            time.sleep(step_seconds)
            job.step(step, steps)
        if self.rank != 0:
            return None
        if picture:
            return Output.from_image(Image.new("RGB", (8, 6), (200, 10, 10)), "png")
        return Output(text.encode(), file_type)


@pytest.fixture(scope="module")
def keyless(launch: Callable[..., Server]) -> Server:
    return launch("--model", MODEL, "--num-devices", "1")


def raw(server: Server, method: str, path: str, **options: Any) -> httpx.Response:
    """A request with exactly the headers given (no client defaults beyond httpx's own)."""
    return httpx.request(method, f"{server.url}{path}", timeout=60, **options)


# ---- 7: bodies ----------------------------------------------------------------------------


@pytest.mark.parametrize("sent", ["text/plain", "text/plain;charset=UTF-8", "application/x-www-form-urlencoded"])
def test_a_body_that_is_not_json_is_415_naming_its_type(keyless: Server, sent: str) -> None:
    body = b'{"text": "x"}'
    for method, path in [("POST", "/generate"), ("POST", "/v1/jobs"), ("PUT", f"/v1/jobs/{uuid.uuid4()}")]:
        response = raw(keyless, method, path, content=body, headers={"Content-Type": sent})
        assert response.status_code == 415, (method, path, response.text)
        assert sent.partition(";")[0] in response.json()["error"]
    before = keyless.http.get("/v1/jobs").json()["data"]
    cancel = raw(keyless, "POST", "/cancel", content=b"{}", headers={"Content-Type": sent})
    assert cancel.status_code == 415, cancel.text
    assert keyless.http.get("/v1/jobs").json()["data"] == before  # nothing was submitted


def test_a_multipart_form_is_taken_only_where_forms_are(keyless: Server) -> None:
    form = {"text": (None, "from a form")}
    assert keyless.http.post("/v1/jobs?wait=60", files=form).status_code == 201
    refused = keyless.http.post("/generate", files=form)
    assert refused.status_code == 415, refused.text
    assert "multipart/form-data" in refused.json()["error"]


def test_the_original_clients_keep_working(keyless: Server) -> None:
    """The original server's clients: python requests with json=, and an empty POST /cancel."""
    submitted = requests.post(f"{keyless.url}/generate", json={"text": "hello"}, timeout=60)
    assert submitted.status_code == 202, submitted.text
    job_id = submitted.json()["request_id"]
    keyless.wait(job_id)
    answer = requests.post(f"{keyless.url}/get_output/{job_id}", timeout=60).json()
    assert answer["file_type"] == "png"
    assert requests.post(f"{keyless.url}/cancel", timeout=60).status_code == 404  # nothing in flight
    by_json = requests.post(f"{keyless.url}/cancel", json={"request_id": job_id}, timeout=60)
    assert by_json.status_code == 404, by_json.text  # it ended: nothing to cancel, but the body was read


# ---- 7: Host ------------------------------------------------------------------------------


@pytest.mark.parametrize("host", [f"{FOREIGN}", f"{FOREIGN}:{{port}}", "127.0.0.1.nip.io:{port}", "localhost.evil"])
def test_a_foreign_host_is_refused_on_a_loopback_server(keyless: Server, host: str) -> None:
    named = host.format(port=keyless.port)
    for method, path in [("GET", "/server_status"), ("GET", "/v1/jobs"), ("GET", "/"), ("POST", "/generate")]:
        response = raw(keyless, method, path, headers={"Host": named}, json={"text": "x"} if method == "POST" else None)
        assert response.status_code == 421, (method, path, response.status_code, response.text)
        assert "--public-url" in response.json()["error"]


@pytest.mark.parametrize("host", ["localhost", "127.0.0.1", "[::1]", "LOCALHOST", "localhost:1"])
def test_loopback_names_are_accepted_with_or_without_a_port(keyless: Server, host: str) -> None:
    for named in (host, f"{host}:{keyless.port}" if host != "localhost:1" else host):
        assert raw(keyless, "GET", "/server_status", headers={"Host": named}).status_code == 200, named


# ---- 7: Origin ----------------------------------------------------------------------------


def running_job(server: Server) -> str:
    job_id = server.submit(text="long", steps=2000, step_seconds=0.05)
    server.wait_running(job_id, step=1)
    return job_id


@pytest.mark.parametrize("origin", [EVIL_ORIGIN, "null", "http://localhost:1", "http://127.0.0.1"])
def test_a_cross_site_post_cannot_cancel_or_submit(keyless: Server, origin: str) -> None:
    job_id = running_job(keyless)
    try:
        headers = {"Origin": origin}
        for path in ["/cancel", f"/cancel/{job_id}", f"/v1/jobs/{job_id}/cancel"]:
            response = raw(keyless, "POST", path, headers=headers)
            assert response.status_code == 403, (path, response.text)
        put = raw(keyless, "PUT", f"/v1/jobs/{uuid.uuid4()}", headers=headers, json={"text": "x"})
        assert put.status_code == 403, put.text
        assert raw(keyless, "POST", "/generate", headers=headers, json={"text": "x"}).status_code == 403
        assert keyless.client.get(job_id).state == "running"
        # A page may still read: GETs are not refused for their Origin (Host guards those).
        assert raw(keyless, "GET", f"/v1/jobs/{job_id}", headers=headers).status_code == 200
    finally:
        same_site = raw(keyless, "POST", f"/cancel/{job_id}", headers={"Origin": keyless.url})
    assert same_site.status_code in (200, 202), same_site.text
    assert keyless.wait(job_id)["state"] == "cancelled"


# ---- 7: a real browser --------------------------------------------------------------------

ATTACK = """<!doctype html><script>
window.attack = async (server) => {
  const sent = await fetch(server + "/cancel", {method: "POST", mode: "no-cors",
                                                headers: {"Content-Type": "text/plain"}, body: "{}"});
  return sent.type;
};
</script>"""


@pytest.fixture(scope="module")
def attacker() -> Iterator[str]:
    """Another site on loopback (another port: another origin) serving the attacking page."""

    class Page(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.end_headers()
            self.wfile.write(ATTACK.encode())

        def log_message(self, *args: Any) -> None:
            pass

    site = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Page)
    threading.Thread(target=site.serve_forever, daemon=True).start()
    yield f"http://localhost:{site.server_address[1]}"
    site.shutdown()
    site.server_close()


def test_a_page_in_a_real_browser_can_neither_cancel_nor_rebind(keyless: Server, attacker: str) -> None:
    from playwright.sync_api import sync_playwright

    from tests.browser import ARGS, CHROMIUM

    job_id = running_job(keyless)
    with sync_playwright() as playwright:
        args = [*ARGS, f"--host-resolver-rules=MAP {FOREIGN} 127.0.0.1"]
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=args)
        try:
            page = browser.new_page()
            page.goto(attacker)
            assert page.evaluate("(server) => window.attack(server)", keyless.url) == "opaque"
            # DNS rebinding: the browser believes rebind.test is its page's own origin.
            rebound = page.goto(f"http://{FOREIGN}:{keyless.port}/server_status")
            assert rebound is not None
            rebound_status = rebound.status
        finally:
            browser.close()
    assert keyless.client.get(job_id).state == "running"  # the no-cors POST reached it, and was refused
    assert rebound_status == 421
    assert raw(keyless, "POST", f"/cancel/{job_id}").status_code in (200, 202)
    keyless.wait(job_id)


# ---- 10: active content -------------------------------------------------------------------

ACTIVE = {"html": "<script>alert(1)</script>", "svg": "<svg xmlns='http://www.w3.org/2000/svg'/>"}
ACTIVE |= {"js": "alert(1)", "xml": "<a/>", "xhtml": "<html/>", "htm": "<p>"}


@pytest.mark.parametrize("file_type", sorted(ACTIVE))
def test_an_active_output_is_an_attachment_with_nosniff_and_a_sandbox(keyless: Server, file_type: str) -> None:
    job = keyless.run(text=ACTIVE[file_type], file_type=file_type)
    assert job["state"] == "succeeded", job
    for response in (
        keyless.http.get(f"/v1/jobs/{job['id']}/output"),
        keyless.http.post("/v1/jobs?wait=60", json={"text": ACTIVE[file_type], "file_type": file_type},
                          headers={"Accept": "application/octet-stream"}),
    ):  # fmt: skip
        assert response.status_code in (200, 201), response.text
        assert response.headers["content-disposition"].startswith("attachment;"), response.headers
        assert response.headers["x-content-type-options"] == "nosniff"
        assert SANDBOX in response.headers["content-security-policy"].split(";")[0]
        assert "default-src 'none'" in response.headers["content-security-policy"]


def test_a_picture_stays_inline_with_nosniff_and_a_sandbox(keyless: Server) -> None:
    job = keyless.run(text="not really a png")
    output = keyless.http.get(f"/v1/jobs/{job['id']}/output")
    assert output.headers["content-disposition"].startswith("inline;")
    assert output.headers["content-type"] == "image/png"
    legacy = keyless.http.get(f"/get_output/{job['id']}")
    for response in (output, legacy):
        assert response.headers["x-content-type-options"] == "nosniff"
        assert response.headers["content-security-policy"].startswith(SANDBOX)


def test_in_a_real_browser_an_active_output_downloads_and_a_picture_shows(keyless: Server) -> None:
    from playwright.sync_api import Error as BrowserError

    from tests.browser import chromium

    page_id = keyless.run(text="<script>document.title = 'ran'</script>", file_type="html")["id"]
    picture_id = keyless.run(picture=True)["id"]
    with chromium() as browser:
        page = browser.new_page()
        with page.expect_download() as download, contextlib.suppress(BrowserError):
            page.goto(f"{keyless.url}/v1/jobs/{page_id}/output")  # "Download is starting": not a page
        assert download.value.suggested_filename == f"{page_id}.html"
        assert page.title() != "ran"
        page.goto(f"{keyless.url}/v1/jobs/{picture_id}/output")
        assert page.evaluate("document.images[0].naturalWidth") == 8  # the sandbox still shows it


def image_urls(server: Server, **headers: str) -> list[str]:
    answer = raw(server, "POST", "/v1/images/generations", json={"prompt": "a cat", "response_format": "url"},
                 headers={"Content-Type": "application/json", **headers})  # fmt: skip
    assert answer.status_code == 200, answer.text
    return [item["url"] for item in answer.json()["data"]]


def test_url_answers_never_come_from_the_clients_host(launch: Callable[..., Server]) -> None:
    keyed = launch("--model", MODEL, "--num-devices", "1", "--api-key", "k")
    (url,) = image_urls(keyed, Host="evil.example", Authorization="Bearer k")
    assert url.startswith(f"http://127.0.0.1:{keyed.port}/v1/jobs/"), url
    fetched = httpx.get(url, headers={"Authorization": "Bearer k"}, timeout=60)
    assert fetched.status_code == 200


def test_url_answers_are_built_on_the_public_url(launch: Callable[..., Server]) -> None:
    public = "https://gen.example.com/para"
    server = launch("--model", MODEL, "--num-devices", "1", "--public-url", public)
    (url,) = image_urls(server, Host="localhost")
    assert url.startswith(f"{public}/v1/jobs/"), url
    assert url.endswith("/output"), url
    # Behind its proxy the public name is the server's own: as a Host, and as an Origin.
    assert raw(server, "GET", "/server_status", headers={"Host": "gen.example.com"}).status_code == 200
    proxied = {"Host": "gen.example.com", "Origin": "https://gen.example.com"}
    assert raw(server, "POST", "/generate", headers=proxied, json={"text": "x"}).status_code == 202


# ---- 11: stalled readers of a streamed answer ---------------------------------------------


def rss(pid: int) -> int:
    return status_bytes(pid, "VmRSS")


def settled_rss(pid: int, timeout: float = 60) -> int:
    """The process's resident memory once it stopped changing (for 1 s): the stalled
    responses have prepared all they will."""
    deadline, last, since = time.monotonic() + timeout, rss(pid), time.monotonic()
    while time.monotonic() - since < 1:
        assert time.monotonic() < deadline, "the server's memory never settled"
        time.sleep(0.05)
        now = rss(pid)
        if abs(now - last) > 256 * 1024:
            last, since = now, time.monotonic()
    return rss(pid)


@pytest.fixture(scope="module")
def large(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, str]]:
    """A server with a 64 MiB output on disk (none kept in memory), and its job id. Every
    allocation of 64 KiB or more is a mapping of its own, unmapped when freed: the server's
    resident memory is then what it holds, not what its allocator kept from earlier peaks."""
    args = ["--model", "noop", "--num-devices", "1", "--output-memory-bytes", "0"]
    env = server_env(MALLOC_MMAP_THRESHOLD_=str(64 * 1024))
    with Server(args, tmp_path_factory.mktemp("large"), env=env) as server:
        yield server, server.run(size=64 * 1024 * 1024)["id"]


@pytest.mark.parametrize("readers", [4, 16])
@pytest.mark.parametrize("route", ["/get_output/{}", "/v1/jobs/{}/output"])
def test_stalled_readers_of_a_large_output_hold_little(
    large: tuple[Server, str], report: Report, route: str, readers: int
) -> None:
    server, job_id = large
    path = route.format(job_id)
    assert len(server.http.get(path).content) >= 64 * 1024 * 1024  # the file is checked once
    before = settled_rss(server.process.pid)
    with stalled_readers(server, path, readers):
        grown = settled_rss(server.process.pid) - before
    # Before: a chunk in the write buffer and the next read and encoded behind it, 11 MiB a reader.
    assert grown < readers * 2 * 1024 * 1024, f"+{grown / 2**20:.1f} MiB"
    report.add(
        "Integrity",
        case=f"{readers} clients that request a 64 MiB output's {route.format('{id}')} and read no further",
        outcome=f"server RSS +{grown / 2**20:.1f} MiB once settled",
    )
