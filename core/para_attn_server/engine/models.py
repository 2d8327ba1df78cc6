"""The models a server serves: each with its predictor (the server process's instance), its
request schema and its counts. Groups run one model's jobs each (``group.model``); a request
chooses its model by name (its ``model`` field; omitted: the first).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from para_attn_server.errors import InputError
from para_attn_server.schema import MODEL

if TYPE_CHECKING:
    from para_attn_server.predictor import Predictor
    from para_attn_server.schema import InputSchema


@dataclass
class ServedModel:
    name: str
    predictor: Predictor
    schema: InputSchema
    submitted: int = 0
    finished: dict[str, int] = field(default_factory=dict)  # by final state

    @property
    def layout(self) -> dict[str, int]:
        """How its ranks split a job, as its predictor says (``Predictor.parallel_layout``)."""
        layout = getattr(self.predictor, "parallel_layout", None)
        return dict(layout()) if callable(layout) else {}

    @property
    def predictor_class(self) -> type:
        """The predictor's own class (one written for the original server, unwrapped)."""
        return type(getattr(self.predictor, "inner", self.predictor))


class ServedModels(dict[str, ServedModel]):
    """The served models by name, the first the default."""

    @property
    def first(self) -> ServedModel:
        return next(iter(self.values()))

    def named(self, name: str | None) -> ServedModel:
        """The model ``name`` chooses (None: the first); ``InputError`` naming ``model``,
        with the served names, for another."""
        if name is None:
            return self.first
        model = self.get(name)
        if model is None:
            raise InputError(f"no model {name!r} here: this server serves {', '.join(map(repr, self))}", MODEL)
        return model

    def of(self, inputs: dict[str, Any]) -> ServedModel:
        """The model a job's inputs chose."""
        return self.named(inputs.get(MODEL))
