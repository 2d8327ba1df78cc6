"""The ``openai`` plugin: OpenAI's images, videos and models APIs over the served predictors,
so the official ``openai`` SDK (and tools that speak it) generate with this server.

- ``POST /v1/images/generations`` for predictors whose ``predict`` takes a ``prompt``:
  ``n`` jobs (``--max-n``), ``size`` -> width/height, ``response_format`` b64_json or url;
- ``POST /v1/images/edits`` (a multipart form): the same, with the ``image`` part(s) and
  ``mask`` as the predictor's picture fields (``image``, ``mask_image``);
- ``/v1/videos`` for video predictors (``prompt``, ``num_frames`` and ``fps``: ``wan``), an
  ``input_reference`` as the predictor's ``image``;
- ``GET /v1/models``: every served model under its name (the first the default), then each
  adapter (LoRA) the server offers as a model whose ``parent`` is the first served model.
  ``model`` in the other routes chooses the served model that runs the request (its jobs'
  ``model`` field; left out: the first); ``model="<adapter>"`` runs the first with that
  adapter at scale 1.

Jobs go through the app's ``Jobs`` (``para_attn_server.plugin``) as every route's do (same
checks, same queue), and any field of the chosen predictor's ``predict`` is accepted beside
OpenAI's (the SDK's ``extra_body``). Errors are in OpenAI's shape (``errors``). Modules by
role: ``mapping`` (fields, no HTTP), ``schemas`` (bodies), ``forms`` (JSON or form bodies,
file parts as bytes), ``adapters`` (adapters as models, no HTTP), ``images``, ``videos``,
``models`` (controllers), ``errors``, ``context`` (what handlers share), ``settings``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import msgspec

from para_attn_server import Settings, hookimpl

from .settings import OpenAISettings

if TYPE_CHECKING:
    from para_attn_server.plugin import Jobs

SECTION = "openai"


@hookimpl
def register_settings(register: Callable[[str, type[msgspec.Struct]], None]) -> None:
    register(SECTION, OpenAISettings)


@hookimpl
def register_routes(register: Callable[[Any], None], jobs: Jobs, settings: Settings) -> None:
    # Imported here: rank processes load this plugin too, and never serve HTTP.
    from litestar import Router

    from .context import OpenAIContext, provide
    from .errors import HANDLERS, UNAUTHORIZED, UNAUTHORIZED_RESPONSE
    from .images import ImagesController
    from .models import ModelsController
    from .videos import VideosController

    context = OpenAIContext.of(
        jobs, settings.section(OpenAISettings), settings.jobs.result_ttl, settings.http.public_url
    )
    register(
        Router(
            "/v1",
            route_handlers=[ImagesController, VideosController, ModelsController],
            dependencies=provide(context),
            exception_handlers=HANDLERS,
            # The API-key middleware's 401 in OpenAI's shape on these routes (http/auth.py).
            # "forms": without an API key, multipart bodies are taken here (http/policy.py): edits, videos.
            opt={"unauthorized_body": UNAUTHORIZED, "unauthorized_response": UNAUTHORIZED_RESPONSE, "forms": True},
        )
    )
