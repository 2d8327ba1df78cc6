"""Checks and a helper the OpenAI plugin's unit tests share."""

from __future__ import annotations

from typing import Any

import pytest

from para_attn_server import InputError
from para_attn_server.engine.service import JobService


def rejected(call: Any, field: str) -> str:
    """``call()`` raises an ``InputError`` naming ``field``; its message."""
    with pytest.raises(InputError) as caught:
        call()
    assert caught.value.field == field, caught.value
    return caught.value.message


def named(service: JobService, name: str) -> JobService:
    """``service`` (the unit fixture's, serving one model under no name) serving its model as
    ``name``, as a server names it (``--served-model-name``)."""
    (model,) = service.models.values()
    service.models.clear()
    model.name = model.schema.name = name
    service.models[name] = model
    return service
