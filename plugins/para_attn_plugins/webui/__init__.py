"""The ``webui`` plugin: a web page at ``/`` to submit jobs and watch them run.

The page is plain HTML, CSS and JavaScript under ``static/`` (no build step, nothing
loaded from another host, so it works offline). It builds its form from the server's
OpenAPI document, follows a job through ``/v1/jobs/{id}/events`` and shows the output.
``/`` answers the page; ``/ui/...`` its scripts and styles. A picture or video field is a
file picker (a drop or a paste too) whose file goes in the JSON body as a ``data:`` URL;
"Use as input" puts a finished job's image in the form as ``job:<id>``. When the server
offers adapters (LoRA: ``GET /v1/loras`` lists some), ``loras`` is a checkbox and a scale
per adapter (``static/adapters.js``); otherwise it is left off the form. Under the jobs,
the hosts that serve the worker groups (``static/hosts.js``, from ``/server_status``): each
host's state, devices, groups (ready, busy or starting) and job runs, refreshed with the jobs.
A server of several models (``/server_status`` lists them) gets a model selector in the
header (``static/models.js``): choosing one rebuilds the form from that model's schema
(``/v1/models/{name}/schema``) and sends its name as the job's ``model``.

With ``--api-key`` the page asks for the key once, keeps it in the browser's session
storage, and sends it as ``Authorization: Bearer`` on every request, the event stream
included (read with ``fetch``, not ``EventSource``, which cannot send headers): the key
never goes into a URL, so never into a log.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from para_attn_server import hookimpl

STATIC = Path(__file__).with_name("static")


@hookimpl
def register_routes(register: Callable[[Any], None]) -> None:
    # Imported here: rank processes load this plugin too, and never serve HTTP.
    from litestar import get
    from litestar.response import File
    from litestar.static_files import create_static_files_router

    # "public": the API-key middleware lets these through. They are the page's own files,
    # hold no secret, and must load before the page can ask for the key; every request the
    # page then makes (schema, jobs, events, outputs) carries the key.
    public = {"public": True}

    # The return annotation is a string (postponed annotations) naming a local import.
    @get("/", opt=public, include_in_schema=False, signature_namespace={"File": File})
    async def index() -> File:
        return File(STATIC / "index.html", media_type="text/html; charset=utf-8", content_disposition_type="inline")

    register(index)
    register(create_static_files_router("/ui", directories=[STATIC], opt=public, include_in_schema=False))
