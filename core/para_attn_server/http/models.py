"""``GET /v1/models/{model}/schema``: a served model's request schema (JSON Schema), for a
client or page that builds its request for one model of several. A hub id's name has one
``/`` (``owner/name``): its schema is at ``/v1/models/owner/name/schema``."""

from __future__ import annotations

from typing import Any

import msgspec
from litestar import Controller, get
from litestar.params import FromPath

from para_attn_server.http.dependencies import Service
from para_attn_server.http.openapi import errors


class ModelSchemaController(Controller):
    path = "/v1/models"
    tags = ("models",)

    @get("/{model:str}/schema", summary="A served model's request schema", responses=errors(400))
    async def model_schema(self, service: Service, model: FromPath[str]) -> dict[str, Any]:
        return _schema(service, model)

    @get("/{owner:str}/{model:str}/schema", summary="A served model's request schema (a hub id)", responses=errors(400))
    async def hub_model_schema(self, service: Service, owner: FromPath[str], model: FromPath[str]) -> dict[str, Any]:
        return _schema(service, f"{owner}/{model}")


def _schema(service: Service, name: str) -> dict[str, Any]:
    schema = service.models.named(name).schema  # InputError (400) naming ``model`` for another
    document: dict[str, Any] = msgspec.json.schema(schema.type)
    document["x-model"] = name
    document["x-default"] = name == next(iter(service.models))
    return document
