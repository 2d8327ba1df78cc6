"""Adapters (LoRA) as OpenAI models: each adapter the server offers is a model of its own
in ``GET /v1/models`` (its ``parent`` the served model), and ``model="<adapter>"`` in an
images or videos request applies that adapter at scale 1 (the job's ``loras``). No HTTP
here: the names come from the app's ``Jobs`` at each request, as adapters come and go at
run time (``/v1/loras``)."""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

from para_attn_server import InputError

LORAS = "loras"  # the request field of a predictor that applies adapters


def model_adapter(model: str | None, served: str, adapters: Collection[str] = ()) -> str | None:
    """The adapter ``model`` names, or None for the served model (named or left out). Any
    other name is an ``InputError`` naming ``model``."""
    if model is None or model == served:
        return None
    if model in adapters:
        return model
    also = f" and its adapters {', '.join(sorted(adapters))}" if adapters else " only"
    raise InputError(f"this server serves {served!r}{also} (GET /v1/models)", "model")


def with_adapter(inputs: dict[str, Any], adapter: str | None) -> dict[str, Any]:
    """``inputs`` applying ``adapter`` at scale 1, before the adapters their own ``loras``
    name; where those name it already, their scale stands. A ``loras`` that is no list is
    left for the schema's check to refuse."""
    given = inputs.get(LORAS) or []
    if adapter is None or not isinstance(given, list):
        return inputs
    if any(isinstance(item, dict) and item.get("name") == adapter for item in given):
        return inputs
    return {**inputs, LORAS: [{"name": adapter, "scale": 1.0}, *given]}
