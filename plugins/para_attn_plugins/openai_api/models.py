"""``GET /v1/models`` and ``GET /v1/models/{model}``: the served model, under its
``--model`` name (what the ``model`` field of the other routes must equal)."""

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

    @get("/", summary="List models (OpenAI's models API)", responses={200: spec(ModelList, "The served model")})
    async def list_models(self, api: Api) -> ModelList:
        return ModelList([_model(api)])

    @get("/{model:str}", summary="Get a model (OpenAI's models API)", responses=responses(404))
    async def get_model(self, api: Api, model: FromPath[str]) -> Model:
        if model != api.served:
            raise OpenAIError(404, f"this server serves {api.served!r} only", code="model_not_found", param="model")
        return _model(api)


def _model(api: OpenAIContext) -> Model:
    return Model(api.served, api.started, OWNER)
