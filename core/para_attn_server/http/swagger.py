"""The pages at /schema: Swagger UI, whose script, style and icon this server serves itself
from the swagger-ui-bundle-v2 package, so the pages render without internet. Litestar's
viewers load their files from CDNs: of them only the documents (openapi.json, .yaml) are kept.

The files' URL names the Swagger UI version (``/schema/swagger-ui-5.31.0/...``), so a browser
may keep them for good: another version is another URL.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from litestar import Router, get
from litestar.datastructures import CacheControlHeader
from litestar.exceptions import NotFoundException
from litestar.openapi.plugins import JsonRenderPlugin, OpenAPIRenderPlugin, SwaggerRenderPlugin, YamlRenderPlugin
from litestar.params import FromPath
from litestar.response import File
from swagger_ui_bundle import swagger_ui_path

ASSETS = Path(str(swagger_ui_path))  # .../vendor/swagger-ui-<version>
# What the page loads, and nothing else of the package (its demo page points at the internet).
MEDIA_TYPES = {
    "swagger-ui-bundle.js": "text/javascript",
    "swagger-ui-standalone-preset.js": "text/javascript",
    "swagger-ui.css": "text/css",
    "favicon-32x32.png": "image/png",
}
FOREVER = CacheControlHeader(max_age=365 * 24 * 3600, public=True, immutable=True)


@get(
    f"/{ASSETS.name}/{{name:str}}",
    sync_to_thread=False,
    include_in_schema=False,
    cache_control=FOREVER,
    # public: the files hold no secret, and the page must load them before anyone can enter a key
    opt={"public": True},
)
def swagger_file(name: FromPath[str]) -> File:
    media_type = MEDIA_TYPES.get(name)
    if media_type is None:
        raise NotFoundException(f"no such file of the schema pages: {name}")
    return File(ASSETS / name, media_type=media_type, content_disposition_type="inline")


class LocalSwagger(SwaggerRenderPlugin):
    """Litestar's Swagger UI page (at /schema and /schema/swagger) with its files served here."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(path=["/", "/swagger"], **kwargs)

    def receive_router(self, router: Router) -> None:
        super().receive_router(router)  # Swagger UI's OAuth2 redirect page
        base = f"{router.path.rstrip('/')}/{ASSETS.name}"
        self.js_url = f"{base}/swagger-ui-bundle.js"
        self.css_url = f"{base}/swagger-ui.css"
        self.standalone_preset_js_url = f"{base}/swagger-ui-standalone-preset.js"
        self.favicon = f"<link rel='icon' type='image/png' href='{base}/favicon-32x32.png'>"
        router.register(swagger_file)


def render_plugins() -> list[OpenAPIRenderPlugin]:
    """The pages and documents under /schema."""
    return [LocalSwagger(), JsonRenderPlugin(), YamlRenderPlugin()]
