"""``GET /v1/models`` and ``GET /v1/models/{model}``: the served model under its ``--model``
name, then each adapter (LoRA) the server offers now as a model whose ``parent`` is the
served one (what the ``model`` field of the other routes may name: see ``adapters``)."""

from __future__ import annotations

from litestar import Controller, get
from litestar.params import FromPath

from para_attn_server.plugin import spec

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
        responses={200: spec(ModelList, "The served model, then its adapters (LoRA), whose parent it is")},
    )
    async def list_models(self, api: Api) -> ModelList:
        return ModelList([_model(api), *(_model(api, name) for name in api.adapters)])

    @get("/{model:str}", summary="Get a model (OpenAI's models API)", responses=responses(404))
    async def get_model(self, api: Api, model: FromPath[str]) -> Model:
        if model == api.served:
            return _model(api)
        adapters = api.adapters
        if model in adapters:
            return _model(api, model)
        also = f" and its adapters {', '.join(adapters)}" if adapters else " only"
        raise OpenAIError(404, f"this server serves {api.served!r}{also}", code="model_not_found", param="model")


def _model(api: OpenAIContext, adapter: str | None = None) -> Model:
    if adapter is None:
        return Model(api.served, api.started, OWNER)
    return Model(adapter, api.started, OWNER, parent=api.served)
