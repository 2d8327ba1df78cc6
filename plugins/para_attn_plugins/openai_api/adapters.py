"""Adapters (LoRA) as OpenAI models: each adapter the server offers is a model of its own
in ``GET /v1/models`` (its ``parent`` the first served model, whose adapters they are), and
``model="<adapter>"`` in an images or videos request runs the first model with that adapter
at scale 1 (the job's ``loras``). No HTTP here: the names come from the app's ``Jobs`` at
each request, as adapters come and go at run time (``/v1/loras``)."""

from __future__ import annotations

from collections.abc import Collection, Sequence
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
    raise unknown_model(model, [served], adapters)


def unknown_model(model: str, served: Sequence[str], adapters: Collection[str] = ()) -> InputError:
    """The 400 for a ``model`` that names neither a served model nor an adapter: it lists
    them (``served``: the served models' names, the first the one the adapters belong to)."""
    offered = ", ".join(sorted(adapters))
    if len(served) == 1:
        also = f" and its adapters {offered}" if adapters else " only"
        listing = f"{served[0]!r}{also}"
    else:
        also = f" and the adapters {offered} of {served[0]!r}" if adapters else ""
        listing = f"the models {', '.join(map(repr, served))}{also}"
    return InputError(f"no model {model!r} here: this server serves {listing} (GET /v1/models)", "model")


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
