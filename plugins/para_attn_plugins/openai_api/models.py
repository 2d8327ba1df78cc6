"""``GET /v1/models`` and ``GET /v1/models/{model}``: every served model under its name (the
first the default), then each adapter (LoRA) the server offers now as a model whose
``parent`` is the first served model, whose adapters they are (what the ``model`` field of
the other routes may name: see ``context.OpenAIContext.choose``). A hub id's name has one
``/`` (``owner/name``): it is found at ``/v1/models/owner/name``."""

from __future__ import annotations

from litestar import Controller, get
from litestar.params import FromPath

from para_attn_server.plugin import spec

from .adapters import unknown_model
from .context import Api, OpenAIContext
from .errors import OpenAIError, responses
from .schemas import Model, ModelList

OWNER = "para-attn-server"


class ModelsController(Controller):
    path = "/models"
    tags = ("OpenAI",)

    @get(
        "/",
        summary="List models (OpenAI's models API)",
        responses={200: spec(ModelList, "The served models (the first the default), then the first's adapters (LoRA)")},
    )
    async def list_models(self, api: Api) -> ModelList:
        served = [Model(name, api.started, OWNER) for name in api.models]
        return ModelList([*served, *(_adapter(api, name) for name in api.adapters)])

    @get("/{model:str}", summary="Get a model (OpenAI's models API)", responses=responses(404))
    async def get_model(self, api: Api, model: FromPath[str]) -> Model:
        return _find(api, model)

    @get("/{owner:str}/{model:str}", summary="Get a model named by a hub id (OpenAI's models API)",
         responses=responses(404))  # fmt: skip
    async def get_hub_model(self, api: Api, owner: FromPath[str], model: FromPath[str]) -> Model:
        return _find(api, f"{owner}/{model}")


def _find(api: OpenAIContext, model: str) -> Model:
    if model in api.models:
        return Model(model, api.started, OWNER)
    adapters = api.adapters
    if model in adapters:
        return _adapter(api, model)
    refused = unknown_model(model, api.models, adapters)
    raise OpenAIError(404, refused.message, code="model_not_found", param="model")


def _adapter(api: OpenAIContext, name: str) -> Model:
    return Model(name, api.started, OWNER, parent=api.served)
