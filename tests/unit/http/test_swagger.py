"""http.swagger: the /schema pages name only files of this server, which serves them (to
anyone: a browser loads them before any key is entered), and nothing else of the package.
The page rendering with the network blocked is tests/integration/test_schema_offline.py."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator

import httpx
import pytest

from para_attn_server.engine.service import JobService
from para_attn_server.http import create_app, swagger

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(60, method="thread")]
KEY = "swagger-test-key"


@pytest.fixture
async def client(service: JobService) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=create_app(service, api_key=KEY))
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        yield client


async def test_the_page_loads_only_this_servers_files_and_they_are_served_without_a_key(
    client: httpx.AsyncClient,
) -> None:
    page = await client.get("/schema", headers={"X-API-Key": KEY})
    assert page.status_code == 200
    head = page.text.split("<body>", 1)[0]
    loaded = re.findall(r"""(?:src|href)=["']([^"']+)["']""", head)
    assert len(loaded) == 4, loaded  # script, preset, style, icon
    for url in loaded:
        assert url.startswith(f"/schema/{swagger.ASSETS.name}/"), url
        response = await client.get(url)  # no key
        assert response.status_code == 200, (url, response.text)
        assert response.content == (swagger.ASSETS / url.rsplit("/", 1)[1]).read_bytes()
        assert response.headers["content-type"].split(";")[0] == swagger.MEDIA_TYPES[url.rsplit("/", 1)[1]]
        assert "immutable" in response.headers["cache-control"]


async def test_the_pages_themselves_need_the_key(client: httpx.AsyncClient) -> None:
    for path in ("/schema", "/schema/swagger", "/schema/openapi.json"):
        assert (await client.get(path)).status_code == 401, path


async def test_other_files_of_the_package_are_not_served(client: httpx.AsyncClient) -> None:
    # index.html is the package's demo page (it loads a document from the internet)
    assert (swagger.ASSETS / "index.html").is_file()
    for name in ("index.html", "swagger-initializer.js", "..%2F__init__.py"):
        response = await client.get(f"/schema/{swagger.ASSETS.name}/{name}")
        assert response.status_code == 404, (name, response.text)


async def test_swagger_ui_is_a_version_that_reads_openapi_3_1(client: httpx.AsyncClient) -> None:
    document = (await client.get("/schema/openapi.json", headers={"X-API-Key": KEY})).json()
    assert document["openapi"].startswith("3.1")
    major = int(swagger.ASSETS.name.removeprefix("swagger-ui-").split(".")[0])
    assert major >= 5, f"{swagger.ASSETS.name} cannot render OpenAPI {document['openapi']}"
