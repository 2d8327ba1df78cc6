"""``/v1/loras``: the adapters (LoRA) requests may apply, listed, added and removed at run
time (behind the API key, as every route but the probes). Served only when the predictor
applies adapters. What may be added is confined to ``--lora-dir`` (``Adapters.add``), and
each is checked against the model before it is offered."""

from __future__ import annotations

from typing import Annotated

import msgspec
from litestar import Controller, Response, delete, get, post
from litestar.exceptions import NotFoundException
from litestar.params import FromPath, JSONBody

from para_attn_client.wire import Adapter as AdapterInfo
from para_attn_client.wire import AdapterList
from para_attn_server.adapters import Adapters
from para_attn_server.engine.registry import adapters_of
from para_attn_server.http.dependencies import Service
from para_attn_server.http.errors import Conflict
from para_attn_server.http.openapi import errors, spec


class AdapterRegistration(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    name: Annotated[str, msgspec.Meta(description="The name requests will apply it by")]
    path: Annotated[
        str, msgspec.Meta(description="A .safetensors file or a directory of one, under the server's --lora-dir")
    ]


class LorasController(Controller):
    path = "/v1/loras"
    tags = ("adapters",)

    @get("/", summary="The adapters (LoRA) requests may apply")
    async def list_loras(self, service: Service) -> AdapterList:
        adapters = _adapters(service)
        return AdapterList([adapters.info(name, _loaded_by(service, name)) for name in adapters.names()])

    @post(
        "/",
        status_code=201,
        summary="Offer an adapter (LoRA) from --lora-dir",
        description="The file is checked against the model first (a LoRA, for layers this model has, "
        "of a rank it can load): one that cannot load is a 400 saying why.",
        responses={201: spec(AdapterInfo, "Offered"), **errors(400)},
    )
    async def add_lora(self, service: Service, data: JSONBody[AdapterRegistration]) -> AdapterInfo:
        return _adapters(service).add(data.name, data.path)

    @delete(
        "/{name:str}",
        status_code=204,
        summary="Stop offering an adapter",
        description="Refused (409) while a queued or running job applies it. Worker groups that hold it "
        "loaded drop it as they evict it.",
        responses=errors(404, 409),
    )
    async def remove_lora(self, service: Service, name: FromPath[str]) -> Response[None]:
        adapters = _adapters(service)
        if name not in adapters.paths:
            raise NotFoundException(f"no adapter is named {name!r}")
        waiting = [*service.queue, *service.dispatcher.running_jobs()]
        using = sum(name in adapters_of(job) for job in waiting)
        if using:
            raise Conflict(f"{using} queued or running job(s) apply {name!r}: remove it once they ended")
        adapters.remove(name)
        return Response(None, status_code=204)


def _adapters(service: Service) -> Adapters:
    assert service.schema.adapters is not None  # the routes are served only then
    return service.schema.adapters


def _loaded_by(service: Service, name: str) -> list[int]:
    return [group.index for group in service.groups if name in group.adapters.loaded]
